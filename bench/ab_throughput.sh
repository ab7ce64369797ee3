#!/usr/bin/env bash
# Interleaved A/B of two or more moetrain binaries on one recipe (trainer tokens/s and CPU s/step),
# for before/after comparisons of an optimization on a shared machine. Run from the repository root.
#
# Usage: bash bench/ab_throughput.sh RECIPE STEPS ROUNDS BINARY...
# Env:   THREADS (2), DATA (data/brown), WARMUP (3). Each line: binary, median / p90 / max of the
#        per-step tokens/s over the timed steps, and CPU seconds per step (all threads).
set -euo pipefail
[[ $# -ge 4 ]] || { sed -n 5,7p "$0" >&2; exit 2; }
recipe=$1 steps=$2 rounds=$3
shift 3
export OMP_NUM_THREADS=${THREADS:-2} OMP_WAIT_POLICY=passive
for round in $(seq 1 "$rounds"); do
  for bin in "$@"; do
    /usr/bin/python3 bench/moetrain_throughput.py "$recipe" --moetrain "$bin" --data "${DATA:-data/brown}" \
      --steps "$steps" --warmup "${WARMUP:-3}" |
      /usr/bin/python3 -c "
import json, sys
r = json.loads(sys.stdin.read()); s = sorted(r['step_tokens_per_s'])
print('round $round %-32s median %6d  p90 %6d  max %6d  CPU s/step %.3f' % (sys.argv[1], r['tokens_per_s'],
      s[max(0, int(len(s) * 0.9) - 1)], s[-1], r['cpu_s_per_step']))" "$bin"
  done
done
