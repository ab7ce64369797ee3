#!/usr/bin/python3
# Figures of routing dynamics from moetrain run directories (routing.h5, recipe.toml): MaxVio over
# steps per strategy, expert-load heatmaps, the congestion-temperature proxy, genre specialization.
"""Usage: /usr/bin/python3 tools/plot_routing.py --out DIR RUN_DIR [RUN_DIR ...]

Writes PNG files into DIR (docs/formats.md describes routing.h5):
  maxvio_layer<l>.png       MaxVio (max load / mean load - 1) per training step, one line per run
  load_<run>.png            expert x step heatmap of each expert's share of the step's assignments,
                            one panel per MoE layer
  temperature.png           the congestion-temperature proxy as its slope 1/t_eff per step (fits with
                            R^2 = 0, i.e. degenerate ones, left out), one panel per layer, one line per run
  genre_<run>.png           last evaluation: per layer, the genre x expert share of each genre's
                            assignments, and the Jensen-Shannon divergence of each genre's expert
                            distribution from the overall validation distribution
  genre_jsd.png             mean JSD over genres per layer and run (how specialized experts are)
Needs h5py, numpy and matplotlib (Debian's python3-* packages); call /usr/bin/python3.
"""
import argparse
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")
import h5py  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = None


def fail(msg):
    print("plot_routing: error: " + msg, file=sys.stderr)
    sys.exit(1)


def read_recipe(run_dir):
    path = os.path.join(run_dir, "recipe.toml")
    if tomllib is None or not os.path.exists(path):
        return {}
    with open(path, "rb") as f:
        return tomllib.load(f)


def genre_names(run_dir, recipe, count):
    """Genre names from the run's prepared data (meta.toml); indices when it is not reachable."""
    data_dir = recipe.get("data", {}).get("dir", "")
    candidates = []
    if data_dir:
        if os.path.isabs(data_dir):
            candidates.append(data_dir)
        else:
            candidates.append(data_dir)  # relative to the working directory (how train resolved it)
            up = os.path.abspath(run_dir)
            for _ in range(4):  # runs/<a>/<b>: the repository root is a few levels up
                up = os.path.dirname(up)
                candidates.append(os.path.join(up, data_dir))
    for d in candidates:
        meta = os.path.join(d, "meta.toml")
        try:
            with open(meta, "rb") as f:
                m = tomllib.load(f) if tomllib else {}
        except OSError:
            continue
        names = m.get("genre_names") or m.get("genres")
        if isinstance(names, list) and len(names) == count:
            return [str(n) for n in names]
    return [str(i) for i in range(count)]


class Run:
    def __init__(self, run_dir):
        self.dir = run_dir
        self.name = os.path.basename(os.path.normpath(run_dir))
        path = os.path.join(run_dir, "routing.h5")
        if not os.path.exists(path):
            fail("run %s: routing.h5 missing" % run_dir)
        self.recipe = read_recipe(run_dir)
        self.strategy = self.recipe.get("router", {}).get("balance", "?")
        self.label = self.name if self.name == self.strategy else "%s (%s)" % (self.name, self.strategy)
        # locking=False: the trainer may still be writing (it opens the file without locks too).
        try:
            f = h5py.File(path, "r", locking=False)
        except TypeError:  # h5py < 3.5 has no locking argument
            f = h5py.File(path, "r")
        with f:
            self.steps = f["/steps"][()]
            self.num_experts = int(f.attrs.get("num_experts", 0))
            self.layers = sorted(int(k[6:]) for k in f.keys() if k.startswith("layer_"))
            self.series = {}
            for l in self.layers:
                g = f["layer_%d" % l]
                self.series[l] = {k: g[k][()] for k in g.keys()}
            self.eval = {}
            if "eval" in f:
                for l in self.layers:
                    key = "layer_%d" % l
                    if key in f["eval"]:
                        e = f["eval"][key]
                        self.eval[l] = {k: (e[k]["steps"][()], e[k]["values"][()]) for k in e.keys()}
        if len(self.steps) == 0:
            fail("run %s: routing.h5 has no logged step" % run_dir)


def save(fig, out_dir, name, written):
    path = os.path.join(out_dir, name)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)


def plot_maxvio(runs, out_dir, written):
    layers = sorted({l for r in runs for l in r.layers})
    for l in layers:
        fig, ax = plt.subplots(figsize=(8, 4.8))
        for r in runs:
            if l in r.series:
                ax.plot(r.steps, r.series[l]["maxvio"], label=r.label, linewidth=1.2)
        ax.set_yscale("symlog", linthresh=0.1)
        ax.set_xlabel("training step")
        ax.set_ylabel("MaxVio = max load / mean load - 1 (symlog)")
        ax.set_title("Layer %d: MaxVio of each step's expert loads, per strategy\n(0 = perfectly balanced; "
                     "E/k - 1 = one expert picked by every token)" % l, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, ncol=2)
        fig.tight_layout()
        save(fig, out_dir, "maxvio_layer%d.png" % l, written)


def plot_load_heatmaps(runs, out_dir, written):
    for r in runs:
        n = len(r.layers)
        fig, axes = plt.subplots(n, 1, figsize=(9, 2.2 * n + 1), squeeze=False)
        for ax, l in zip(axes[:, 0], r.layers):
            load = np.asarray(r.series[l]["load"], dtype=float)  # [T, E]
            tot = load.sum(axis=1, keepdims=True)
            share = np.divide(load, tot, out=np.zeros_like(load), where=tot > 0)
            im = ax.imshow(share.T, aspect="auto", origin="lower", cmap="viridis", interpolation="nearest",
                           extent=[r.steps[0] - 0.5, r.steps[-1] + 0.5, -0.5, load.shape[1] - 0.5])
            ax.set_ylabel("layer %d\nexpert" % l)
            fig.colorbar(im, ax=ax, label="share of step's\nassignments")
        axes[-1, 0].set_xlabel("training step")
        fig.suptitle("%s: each expert's share of the step's assignments (uniform = 1/%d)" % (r.label, r.num_experts),
                     fontsize=10)
        fig.tight_layout()
        save(fig, out_dir, "load_%s.png" % r.name, written)


def smooth(y, window):
    """Centered moving average that ignores NaN (the degenerate fits)."""
    if window <= 1:
        return y
    ok = np.isfinite(y)
    k = np.ones(window)
    num = np.convolve(np.where(ok, y, 0.0), k, mode="same")
    den = np.convolve(ok.astype(float), k, mode="same")
    return np.divide(num, den, out=np.full_like(y, np.nan), where=den > 0)


def plot_temperature(runs, out_dir, written):
    layers = sorted({l for r in runs for l in r.layers})
    fig, axes = plt.subplots(len(layers), 1, figsize=(8, 2.6 * len(layers) + 1.2), squeeze=False, sharex=True)
    for ax, l in zip(axes[:, 0], layers):
        seen = []
        for i, r in enumerate(runs):
            s = r.series.get(l, {})
            if "t_eff" not in s:
                continue
            t = np.asarray(s["t_eff"], dtype=float).copy()
            r2 = np.asarray(s.get("temperature_fit_r2", np.ones_like(t)), dtype=float)
            t[(r2 == 0) | ~np.isfinite(t) | (t == 0)] = np.nan  # degenerate fits are logged as 0
            # Plotted as the slope 1/T_eff: when loads are balanced they no longer follow the logits,
            # the slope goes to 0 and T_eff itself jumps between large +/- values.
            t = 1.0 / t
            color = "C%d" % (i % 10)
            window = max(1, len(t) // 25)
            ax.plot(r.steps, t, color=color, alpha=0.25, linewidth=0.8)
            ax.plot(r.steps, smooth(t, window), color=color, linewidth=1.4, label=r.label)
            seen.append(t[np.isfinite(t)])
        vals = np.concatenate(seen) if seen else np.array([])
        if vals.size:  # single wild fits (near-flat logits) would flatten every other curve
            lo, hi = np.percentile(vals, [2, 98])
            pad = 0.1 * (hi - lo) + 1e-6
            ax.set_ylim(lo - pad, hi + pad)
        ax.axhline(0, color="k", linewidth=0.5)
        ax.set_ylabel("layer %d\n1 / T_eff" % l)
        ax.grid(True, alpha=0.3)
    axes[0, 0].legend(fontsize=7, ncol=2)
    axes[-1, 0].set_xlabel("training step")
    fig.suptitle("Congestion-temperature proxy, plotted as its slope 1/T_eff per step (faint: raw; solid: moving average;\n"
                 "y range: 2-98th pct): fit log(load share_j) = a + V_j / T_eff over loaded experts, V_j = mean router logit\n"
                 "of expert j. 0 = loads independent of the logits (balanced); gamma_proxy = T_eff - 1; degenerate fits omitted",
                 fontsize=8)
    fig.tight_layout()
    save(fig, out_dir, "temperature.png", written)


def jsd(p, q):
    """Jensen-Shannon divergence in bits (0 = identical, 1 = disjoint)."""
    m = 0.5 * (p + q)

    def kl(a, b):
        mask = a > 0
        return float(np.sum(a[mask] * np.log2(a[mask] / b[mask])))

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def plot_genres(runs, out_dir, written):
    summary = {}  # run label -> {layer: mean JSD}
    for r in runs:
        layers = [l for l in r.layers if l in r.eval and "genre_load" in r.eval[l]]
        if not layers:
            continue
        E = r.num_experts
        fig, axes = plt.subplots(len(layers), 2, figsize=(12, 3.2 * len(layers) + 1), squeeze=False,
                                 gridspec_kw={"width_ratios": [3, 2]})
        summary[r.label] = {}
        for row, l in enumerate(layers):
            steps, values = r.eval[l]["genre_load"]
            last = np.asarray(values[-1], dtype=float)
            G = last.size // E
            gl = last.reshape(G, E)
            names = genre_names(r.dir, r.recipe, G)
            tot = gl.sum(axis=1, keepdims=True)
            keep = tot[:, 0] > 0  # genres without validation windows have no distribution
            share = np.divide(gl, tot, out=np.zeros_like(gl), where=tot > 0)
            overall = gl.sum(axis=0)
            overall = overall / overall.sum() if overall.sum() > 0 else overall
            ax = axes[row, 0]
            im = ax.imshow(share, aspect="auto", cmap="magma", interpolation="nearest")
            ax.set_yticks(range(G))
            ax.set_yticklabels(names, fontsize=6)
            ax.set_xlabel("expert")
            ax.set_title("layer %d, eval at step %d: share of each genre's assignments per expert" % (l, steps[-1]),
                         fontsize=9)
            fig.colorbar(im, ax=ax)
            d = np.array([jsd(share[g], overall) if keep[g] else np.nan for g in range(G)])
            ax = axes[row, 1]
            ax.barh(range(G), np.nan_to_num(d), color="tab:blue")
            ax.set_yticks(range(G))
            ax.set_yticklabels(names, fontsize=6)
            ax.invert_yaxis()
            ax.set_xlabel("JSD(genre || all validation), bits")
            ax.set_title("layer %d: genre specialization (mean %.3f)" % (l, np.nanmean(d)), fontsize=9)
            summary[r.label][l] = float(np.nanmean(d))
        fig.suptitle("%s: per-genre expert specialization at the last evaluation" % r.label, fontsize=10)
        fig.tight_layout()
        save(fig, out_dir, "genre_%s.png" % r.name, written)
    if summary:
        labels = list(summary)
        layers = sorted({l for v in summary.values() for l in v})
        fig, ax = plt.subplots(figsize=(max(7, 0.9 * len(labels) + 2), 5))
        w = 0.8 / max(1, len(layers))
        for i, l in enumerate(layers):
            ax.bar(np.arange(len(labels)) + i * w, [summary[k].get(l, np.nan) for k in labels], w, label="layer %d" % l)
        ax.set_xticks(np.arange(len(labels)) + 0.4 - w / 2)
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("mean JSD over genres (bits)")
        ax.set_title("Genre specialization at the last evaluation:\nmean over genres of the Jensen-Shannon divergence of each\n"
                     "genre's expert distribution from the overall one (0 = experts ignore the genre)", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        save(fig, out_dir, "genre_jsd.png", written)


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="directory for the PNG files (created)")
    ap.add_argument("runs", nargs="+", help="run directories (each with routing.h5 and recipe.toml)")
    a = ap.parse_args(argv)
    for d in a.runs:
        if not os.path.isdir(d):
            fail("run %s: not a directory" % d)
    runs = [Run(d) for d in a.runs]
    os.makedirs(a.out, exist_ok=True)
    written = []
    plot_maxvio(runs, a.out, written)
    plot_load_heatmaps(runs, a.out, written)
    plot_temperature(runs, a.out, written)
    plot_genres(runs, a.out, written)
    for p in written:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
