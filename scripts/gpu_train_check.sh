#!/usr/bin/env bash
# On a machine with a GPU: the balance model (recipes/balance/aux_loss.toml) trained from the same
# seed on the CPU and on the device (bf16 activations, fp32 master weights), then both loss
# curves side by side and checked by scripts/loss_curves.py (the first 10 steps within 1e-3, the
# 20-step moving averages within TOL), tokens/s of each, and the device run's MFU against the bf16
# peak measured by scripts/bench_gpu.sh (PEAK_TFLOPS). Exit 77 without a GPU, 1 when a check fails.
#
#   scripts/gpu_train_check.sh [steps] [build_dir]     (default 100 steps, build/)
# Environment: PEAK_TFLOPS (e.g. 700), TOL (the moving averages' largest allowed |difference|,
# default 0.05).
set -euo pipefail
cd "$(dirname "$0")/.."
steps="${1:-100}"
B="${2:-build}"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"
[[ -x "$B/moetrain" ]] || { echo "gpu_train_check.sh: $B/moetrain not built"; exit 1; }
[[ -f data/brown/DONE ]] || "$B/moetrain" prepare brown --out data/brown
out="${OUT:-$B/gpu_train_check}"
rm -rf "$out" && mkdir -p "$out"
common=(--set "train.steps=$steps" --set "eval.every=0" --set "checkpoint.every=0" --set "log.every=1")

set +e
"$B/moetrain" train recipes/balance/aux_loss.toml "${common[@]}" --set train.device=cuda \
  --run-dir "$out/cuda" 2>&1 | tee "$out/cuda.log"
rc=${PIPESTATUS[0]}
set -e
if grep -q "no CUDA device" "$out/cuda.log"; then exit 77; fi
[[ $rc == 0 ]] || { echo "gpu_train_check.sh: the device run failed (rc $rc)"; exit "$rc"; }
"$B/moetrain" train recipes/balance/aux_loss.toml "${common[@]}" --run-dir "$out/cpu" > "$out/cpu.log" 2>&1

set +e
python3 scripts/loss_curves.py "$out/cpu" "$out/cuda" --tol "${TOL:-0.05}"
curves_rc=$?
set -e
python3 - "$out" "${PEAK_TFLOPS:-0}" <<'PY'
import json, sys
out, peak = sys.argv[1], float(sys.argv[2])
def rows(run):
    return [r for r in map(json.loads, open(f"{out}/{run}/metrics.jsonl")) if r.get("kind") == "train"]
cpu, dev = rows("cpu"), rows("cuda")
def tps(rs): skip = rs[len(rs) // 5:]; return sum(r["tokens_per_s"] for r in skip) / len(skip)
# FLOPs per token of recipes/balance/base.toml: 6 x active matmul parameters + causal attention.
d, L, E, H, k, V, S = 128, 4, 16, 128, 2, 256, 128
active = L * (4 * d * d + d * E + k * 3 * d * H) + d * V
flops = 6 * active + 6 * L * S * d
t_cpu, t_dev = tps(cpu), tps(dev)
print(f"tokens/s: cpu {t_cpu:.0f}, cuda {t_dev:.0f} ({t_dev / t_cpu:.1f}x); {flops / 1e6:.2f} MFLOP per token")
if peak > 0: print(f"cuda MFU: {100 * t_dev * flops / (peak * 1e12):.2f}% of {peak:.0f} TFLOP/s (bf16 peak)")
PY
exit "$curves_rc"
