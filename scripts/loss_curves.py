#!/usr/bin/env python3
"""Compares the loss curves of two runs of one recipe: run directories holding metrics.jsonl, e.g.
the CPU run and the device run of scripts/gpu_train_check.sh.

  scripts/loss_curves.py REF_RUN RUN [--early 10] [--early-tol 1e-3] [--window 20] [--tol 0.05]

A bf16 device run and an fp32 CPU run of the same seed take the same path at first and part at
the first loss spike, which amplifies their rounding differences (an H100 run of the balance model,
2026-11-27: within 2e-4 through step 11, 0.107 apart at a spike at step 16, within 0.016 at step
200). So the largest per-step difference says little; two checks instead:
  early     the largest |difference| over the first EARLY steps <= EARLY_TOL: the same model,
            data and first updates (a wrong kernel shows here, from step 1);
  smoothed  the largest |difference| of the WINDOW-step moving averages <= TOL: the two runs
            learn alike after they part.
Prints a table of steps, both checks and the largest per-step difference (for information); speed
is gpu_train_check.sh's to report (tokens/s and MFU). Exit 0 when both checks hold, 1 when one
fails, 2 on unusable input.
"""
import argparse
import json
import sys


def fail(message):
    print(f"loss_curves.py: {message}", file=sys.stderr)
    sys.exit(2)


def train_rows(run):
    path = f"{run}/metrics.jsonl"
    try:
        with open(path) as f:
            rows = [r for r in map(json.loads, f) if r.get("kind") == "train"]
    except (OSError, json.JSONDecodeError) as e:
        fail(f"{path}: {e}")
    if not rows:
        fail(f"{path}: no train rows (log.every = 1 gives one per step)")
    return rows


def moving_average(values, window):
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        if i >= window - 1:
            out.append(total / window)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("ref_run")
    p.add_argument("run")
    p.add_argument("--early", type=int, default=10)
    p.add_argument("--early-tol", type=float, default=1e-3)
    p.add_argument("--window", type=int, default=20)
    p.add_argument("--tol", type=float, default=0.05)
    a = p.parse_args()
    ref, run = train_rows(a.ref_run), train_rows(a.run)
    if [r["step"] for r in ref] != [r["step"] for r in run]:
        fail(f"the runs log different steps ({len(ref)} rows from step {ref[0]['step']}, {len(run)} from step "
             f"{run[0]['step']}): expected the same recipe, steps and log.every")
    if len(ref) < max(a.early, a.window):
        fail(f"{len(ref)} logged steps, fewer than --early {a.early} or --window {a.window}")
    lr, lx = [r["loss"] for r in ref], [r["loss"] for r in run]
    diff = [abs(x - y) for x, y in zip(lr, lx)]

    print(f"| step | {a.ref_run} | {a.run} | diff |\n|---|---|---|---|")
    for r, x, y, d in zip(ref, lr, lx, diff):
        s = r["step"]
        if s in (1, 2, 5, 10) or s % 25 == 0 or s == ref[-1]["step"]:
            print(f"| {s} | {x:.4f} | {y:.4f} | {d:.4f} |")

    early = max(diff[: a.early])
    smooth = [abs(x - y) for x, y in zip(moving_average(lr, a.window), moving_average(lx, a.window))]
    worst_smooth = max(smooth)
    at_smooth = ref[smooth.index(worst_smooth) + a.window - 1]["step"]
    worst = max(diff)
    at_worst = ref[diff.index(worst)]["step"]
    ok_early, ok_smooth = early <= a.early_tol, worst_smooth <= a.tol
    print(f"\nearly: largest |difference| over the first {a.early} steps {early:.2e} "
          f"(tolerance {a.early_tol:g}): {'ok' if ok_early else 'FAIL'}")
    print(f"smoothed: largest |difference| of {a.window}-step moving averages {worst_smooth:.4f} at step "
          f"{at_smooth} (tolerance {a.tol:g}): {'ok' if ok_smooth else 'FAIL'}")
    print(f"largest per-step |difference| {worst:.4f} at step {at_worst} (for information)")
    return 0 if ok_early and ok_smooth else 1


if __name__ == "__main__":
    sys.exit(main())
