#!/usr/bin/env bash
# Parallel training step time on the CPU, interleaved runs of the quickstart model: np 1
# (2 threads), np 2 data parallel, np 2 expert parallel, and np 2 EP with LLEP (1 thread per
# rank). Prints a markdown table: tokens/s, the MoE phases (rank 0's seconds per step: dispatch /
# expert / combine) and under EP the max / mean rank load by owner and as computed.
#
# Usage: bash scripts/bench_parallel.sh [--quick]
# Env:   MOETRAIN (default build/moetrain), RECIPE (recipes/quickstart.toml), STEPS (30), WARMUP (5:
#        steps left out of the medians), ROUNDS (2), SETS (extra --set overrides for every run),
#        LLEP_THRESHOLD (1.1: parallel.llep_threshold of the LLEP run).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=/usr/bin/python3
MOETRAIN=${MOETRAIN:-build/moetrain}
RECIPE=${RECIPE:-recipes/quickstart.toml}
STEPS=${STEPS:-30}
WARMUP=${WARMUP:-5}
ROUNDS=${ROUNDS:-2}
SETS=${SETS:-}
LLEP_THRESHOLD=${LLEP_THRESHOLD:-1.1}
if [[ "${1:-}" == "--quick" ]]; then STEPS=10; WARMUP=3; ROUNDS=1; fi

[[ -x "$MOETRAIN" ]] || { echo "bench_parallel: $MOETRAIN not found; build it: cmake --build build -j2 --target moetrain" >&2; exit 1; }
export OMP_WAIT_POLICY=passive OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

# Tokens/s does not depend on the text: data/brown when prepared, else a small prepared corpus.
DATA=data/brown
if [[ ! -f $DATA/DONE ]]; then
  DATA=${TMPDIR:-/tmp}/moetrain_bench_text
  [[ -f $DATA/DONE ]] || "$MOETRAIN" prepare text /usr/share/common-licenses/{GPL-3,LGPL-2.1,Apache-2.0,GPL-2} --out "$DATA" >/dev/null
fi

OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
common=(--set "data.dir=$DATA" --set "train.steps=$STEPS" --set schedule.warmup_steps=2 --set log.every=1
        --set eval.every=0 --set checkpoint.every=0)
for s in $SETS; do common+=(--set "$s"); done
load_before=$(cut -d' ' -f1-3 /proc/loadavg)

run() {  # name, then the launcher words; the recipe overrides of this layout are in $extra
  local name=$1; shift
  local dir="$OUT/$name.$round"
  "$@" "$MOETRAIN" train "$RECIPE" "${common[@]}" "${extra[@]}" --run-dir "$dir" >"$dir.log" 2>&1 ||
    { echo "bench_parallel: $name failed:" >&2; tail -5 "$dir.log" >&2; exit 1; }
  echo "$dir" >>"$OUT/$name.dirs"
}

names=(np1 np2_dp2 np2_ep2 np2_ep2_llep)
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round" >&2
  mpi=(mpirun --oversubscribe -x OMP_NUM_THREADS=1 -x OMP_WAIT_POLICY -np 2)
  extra=(); run np1 env OMP_NUM_THREADS=2
  extra=(--set parallel.ep=1); run np2_dp2 "${mpi[@]}"
  extra=(--set parallel.ep=2); run np2_ep2 "${mpi[@]}"
  extra=(--set parallel.ep=2 --set parallel.llep=true --set "parallel.llep_threshold=$LLEP_THRESHOLD")
  run np2_ep2_llep "${mpi[@]}"
done

echo "| layout | tokens/s | step s | dispatch s | expert s | combine s | rank load max/mean | computed max/mean | rows moved / step |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for name in "${names[@]}"; do
  $PY - "$WARMUP" "$name" $(cat "$OUT/$name.dirs") <<'EOF'
import json, statistics, sys
warmup, name, dirs = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
rows = []
for d in dirs:
    rows += [r for r in map(json.loads, open(d + "/metrics.jsonl")) if r.get("kind") == "train" and r["step"] > warmup]
med = lambda k: statistics.median(r[k] for r in rows) if k in rows[0] else None
fmt = lambda v, f: "-" if v is None else format(v, f)
tps = med("tokens_per_s")
tokens = rows[0]["tokens_seen"] / rows[0]["step"]
label = {"np1": "np 1 (2 threads)", "np2_dp2": "np 2, dp 2", "np2_ep2": "np 2, ep 2",
         "np2_ep2_llep": "np 2, ep 2, LLEP"}[name]
cols = [fmt(tps, ".0f"), fmt(tokens / tps, ".3f")] + [fmt(med(k), ".4f") for k in ("ep_dispatch_s", "ep_expert_s", "ep_combine_s")]
cols += [fmt(med("ep_load_imbalance"), ".3f"), fmt(med("ep_compute_imbalance"), ".3f"), fmt(med("llep_moved_rows"), ".0f")]
print(f"| {label} | " + " | ".join(cols) + " |")
EOF
done
echo
echo "recipe $RECIPE, $STEPS steps ($WARMUP left out), $ROUNDS rounds, medians over steps; np 2 runs: 1 thread per rank;" \
     "LLEP threshold $LLEP_THRESHOLD; load average before: $load_before, after: $(cut -d' ' -f1-3 /proc/loadavg); $(getconf _NPROCESSORS_ONLN) cores"
