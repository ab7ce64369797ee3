#!/usr/bin/python3
# Independent check of `moetrain compare --csv`: recomputes the routing columns of every row with
# h5py straight from each run's routing.h5 and fails (exit 1, one line per mismatch) on a difference.
"""Usage: /usr/bin/python3 tools/check_compare.py COMPARE.csv RUN_DIR [RUN_DIR ...]  (rows in the same order)"""
import csv
import math
import os
import sys

import h5py
import numpy as np


def expected(run_dir):
    with h5py.File(os.path.join(run_dir, "routing.h5"), "r") as f:
        layers = sorted(k for k in f.keys() if k.startswith("layer_"))
        mv = np.stack([f[l]["maxvio"][()] for l in layers])  # [L, T]
        load = sum(float(np.nansum(f[l]["load"][()])) for l in layers)
        dropped = sum(float(np.nansum(f[l]["dropped"][()])) for l in layers)
        dead = sum(int(round(f[l]["dead_experts"][()][-1])) for l in layers)
        glob = [f["eval"][l]["maxvio_global"]["values"][()][-1] for l in layers
                if "eval" in f and l in f["eval"] and "maxvio_global" in f["eval"][l]]
        # Routing time over step time, steps after the first (step_time_s repeats per layer).
        timed = all("routing_time_s" in f[l] and "step_time_s" in f[l] for l in layers)
        share = (sum(float(np.nansum(f[l]["routing_time_s"][1:])) for l in layers)
                 / float(np.nansum(f[layers[0]]["step_time_s"][1:]))) if timed else float("nan")
        return {
            "AvgMaxVio": float(np.nanmean(mv)),
            "SupMaxVio": float(np.nanmax(mv)),
            "MaxVio_first": float(np.nanmean(mv[:, 0])),
            "MaxVio_last": float(np.nanmean(mv[:, -1])),
            "MaxVio_global": float(max(glob)) if glob else float("nan"),
            "dead_experts": float(dead),
            "dropped_share": dropped / load if load > 0 else float("nan"),
            "routing_time_share": share,
            "steps": float(f["/steps"][()][-1]),
        }


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[0], newline="") as f:
        rows = list(csv.DictReader(f))
    if len(rows) != len(argv) - 1:
        print("check_compare: %d CSV rows for %d run directories" % (len(rows), len(argv) - 1), file=sys.stderr)
        return 1
    bad = 0
    for row, run in zip(rows, argv[1:]):
        for key, want in expected(run).items():
            cell = row[key]
            got = float("nan") if cell == "n/a" else float(cell)
            same = (math.isnan(got) and math.isnan(want)) or abs(got - want) <= 1e-8 * max(1.0, abs(want))
            if not same:
                print("check_compare: %s: %s is %s in the CSV, %r from routing.h5" % (run, key, cell, want))
                bad += 1
    print("check_compare: %d runs, %d mismatches" % (len(rows), bad))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
