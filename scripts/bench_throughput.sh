#!/usr/bin/env bash
# End-to-end training throughput: moetrain's trainer vs. a PyTorch eager twin of the same model and batch
# (bench/torch_moe_model.py), interleaved in one invocation; prints a markdown table and machine info.
#
# Usage: bash scripts/bench_throughput.sh [--quick]
# Env:   MOETRAIN (default build/moetrain), ROUNDS (2), MOE_STEPS (20), TORCH_STEPS (8), WARMUP (3),
#        THREADS (2, torch.set_num_threads and OMP_NUM_THREADS), COMPARE_WAIT_POLICY (1: also time
#        moetrain without OMP_WAIT_POLICY=passive, in round 1), RECIPES (space-separated list).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=/usr/bin/python3                       # Debian's python3-torch lives here, not in the PATH python
MOETRAIN=${MOETRAIN:-build/moetrain}
ROUNDS=${ROUNDS:-2}
MOE_STEPS=${MOE_STEPS:-20}
TORCH_STEPS=${TORCH_STEPS:-8}
WARMUP=${WARMUP:-3}
THREADS=${THREADS:-2}
COMPARE_WAIT_POLICY=${COMPARE_WAIT_POLICY:-1}
RECIPES=${RECIPES:-"recipes/quickstart.toml recipes/balance/aux_loss.toml"}
if [[ "${1:-}" == "--quick" ]]; then ROUNDS=1; MOE_STEPS=10; TORCH_STEPS=3; WARMUP=2; fi

[[ -x "$MOETRAIN" ]] || { echo "bench_throughput: $MOETRAIN not found; build it: cmake --build build -j2 --target moetrain" >&2; exit 1; }
# OpenMP threads that spin while waiting steal the cores OpenBLAS threads need (2 cores here).
export OMP_NUM_THREADS=$THREADS OMP_WAIT_POLICY=passive

# Tokens/s does not depend on the text: use data/brown when it is prepared, else a small corpus
# prepared once from the system's license texts (moetrain prepare text).
DATA=data/brown
if [[ ! -f $DATA/DONE ]]; then
  DATA=${TMPDIR:-/tmp}/moetrain_bench_text
  if [[ ! -f $DATA/DONE ]]; then
    "$MOETRAIN" prepare text /usr/share/common-licenses/{GPL-3,LGPL-2.1,Apache-2.0,GPL-2} --out "$DATA" >/dev/null
  fi
fi

OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
start=$(date +%s)

for round in $(seq 1 "$ROUNDS"); do
  for recipe in $RECIPES; do
    tag=$(echo "$recipe" | tr '/.' '__')
    echo "round $round: $recipe: moetrain" >&2
    $PY bench/moetrain_throughput.py "$recipe" --moetrain "$MOETRAIN" --data "$DATA" --steps "$MOE_STEPS" \
      --warmup "$WARMUP" >>"$OUT/$tag.moe"
    echo "round $round: $recipe: pytorch" >&2
    $PY bench/torch_moe_model.py "$recipe" --steps "$TORCH_STEPS" --warmup "$WARMUP" --threads "$THREADS" \
      >>"$OUT/$tag.torch"
    if [[ $COMPARE_WAIT_POLICY == 1 && $round == 1 ]]; then
      echo "round $round: $recipe: moetrain, OMP_WAIT_POLICY unset" >&2
      env -u OMP_WAIT_POLICY $PY bench/moetrain_throughput.py "$recipe" --moetrain "$MOETRAIN" --data "$DATA" \
        --steps "$MOE_STEPS" --warmup "$WARMUP" >>"$OUT/$tag.spin"
    fi
  done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
elapsed=$(( $(date +%s) - start ))

# Table: medians over rounds of each run's median tokens/s; CPU seconds per step as the load-robust view.
$PY - "$OUT" "$RECIPES" "$COMPARE_WAIT_POLICY" <<'EOF'
import json, statistics, sys
out, recipes, cmp = sys.argv[1], sys.argv[2].split(), sys.argv[3] == "1"
def runs(path):
    try:
        return [json.loads(l) for l in open(path) if l.strip()]
    except FileNotFoundError:
        return []
def med(rs, key):
    v = [r[key] for r in rs if r.get(key) is not None]
    return statistics.median(v) if v else float("nan")
print("| recipe | moetrain tokens/s | PyTorch tokens/s | ratio | moetrain CPU s/step | PyTorch CPU s/step | CPU ratio |"
      + (" moetrain tokens/s, OMP_WAIT_POLICY unset |" if cmp else ""))
print("|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if cmp else ""))
for r in recipes:
    tag = r.replace("/", "_").replace(".", "_")
    m, t, s = runs(f"{out}/{tag}.moe"), runs(f"{out}/{tag}.torch"), runs(f"{out}/{tag}.spin")
    mt, tt = med(m, "tokens_per_s"), med(t, "tokens_per_s")
    mc, tc = med(m, "cpu_s_per_step"), med(t, "cpu_s_per_step")
    row = (f"| {r} | {mt:.0f} | {tt:.0f} | {mt / tt:.2f}x | {mc:.3f} | {tc:.3f} | {tc / mc:.2f}x |")
    if cmp:
        row += f" {med(s, 'tokens_per_s'):.0f} |"
    print(row)
print()
print("Per-run tokens/s (each run's median over its timed steps), in run order:")
for r in recipes:
    tag = r.replace("/", "_").replace(".", "_")
    for kind in ("moe", "torch", "spin"):
        v = [round(x["tokens_per_s"]) for x in runs(f"{out}/{tag}.{kind}")]
        if v:
            print(f"- {r} {dict(moe='moetrain', torch='pytorch', spin='moetrain (OMP_WAIT_POLICY unset)')[kind]}: {v}")
for r in recipes:
    tag = r.replace("/", "_").replace(".", "_")
    m, t = runs(f"{out}/{tag}.moe"), runs(f"{out}/{tag}.torch")
    if m and t:
        print(f"- {r}: {m[0]['header'].split('|')[1].strip()} (moetrain), {t[0]['params']} parameters (PyTorch), "
              f"batch {t[0]['batch_size']} x {t[0]['seq_len']}")
EOF
echo
echo "Command: bash scripts/bench_throughput.sh (ROUNDS=$ROUNDS MOE_STEPS=$MOE_STEPS TORCH_STEPS=$TORCH_STEPS WARMUP=$WARMUP THREADS=$THREADS), data $DATA"
echo "Machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); torch $($PY -c 'import torch; print(torch.__version__)'); moetrain $(git rev-parse --short HEAD)"
echo "Load average (1/5/15 min): before $load_before, after $load_after; wall time ${elapsed}s"
