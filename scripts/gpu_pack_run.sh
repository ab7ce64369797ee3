#!/usr/bin/env bash
# Runs a pack made by `scripts/bench_gpu.sh --pack` (build/gpu_pack.tar.xz: stripped GPU test and
# benchmark binaries, build/moetrain, every non-CUDA shared library down to glibc and its loader,
# data/brown) on a GPU machine that has the NVIDIA driver and CUDA 13's cudart / cuBLAS but none
# of this project's libraries. Into $OUT: environment, GPU tests, kernel benchmarks (the wgmma
# kernels' tests and benchmarks as separate steps with their own time limits), the experts
# benchmark (grouped kernel vs per-expert cuBLAS, rows per expert swept), and the balance model
# trained on the CPU and on the device (metrics.jsonl of both).
#   scripts/gpu_pack_run.sh [pack.tar.xz] [steps]      (TRAIN_ONLY=1: only the two training runs;
#   EXPERTS_ONLY=1: only the experts benchmark; SKIP_EXPERTS=1: all but it;
#   STRATEGIES_ONLY=1: only the strategy sweep: every balancing strategy trained `steps` steps on
#   the device at a GPU-sized shape, then `moetrain compare` of the runs (routing_time_share and
#   tokens_per_s per strategy) into $OUT/strategies.md)
# The machine has no torch: the PyTorch reference device test writes its case files to
# $OUT/torch_reference instead (MOE_TORCH_REFERENCE_OUT); check them where torch is with
# scripts/torch_reference_offline.sh <that folder>.
set -uo pipefail
cd "$(dirname "$0")/.."
pack="${1:-build/gpu_pack.tar.xz}"
steps="${2:-100}"
OUT="${OUT:-/tmp/gpu_out}"
# Set here so moetrain does not re-exec itself to set it (a re-exec under the carried loader
# would lose the program name).
export OMP_WAIT_POLICY=passive
mkdir -p "$OUT"
work=$(mktemp -d)
tar -C "$work" -xJf "$pack" || { echo "cannot unpack $pack"; exit 1; }
P="$work/gpu_pack"
{
  date -u; cat /etc/os-release 2>/dev/null | head -2; ldd --version 2>&1 | head -1
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.total --format=csv 2>&1
  ls -d /usr/local/cuda* 2>&1; nproc
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
# CUDA runtime and cuBLAS from this machine (the pack leaves them out), the driver from its usual place.
cuda_dirs=$(find /usr/local/cuda*/lib64 /usr/local/cuda*/lib /usr/local/cuda*/targets/x86_64-linux/lib /usr/lib/x86_64-linux-gnu /usr/lib64 \
  -maxdepth 1 \( -name 'libcudart.so.13*' -o -name 'libcublas.so.13*' -o -name 'libcuda.so.1' \) -printf '%h\n' 2>/dev/null | sort -u | paste -sd:)
echo "CUDA libraries from: $cuda_dirs" | tee -a "$OUT/env.txt"
# Run with this machine's glibc if the binaries load that way, else with the carried loader and glibc.
run() { LD_LIBRARY_PATH="$P/libs:$cuda_dirs" "$@"; }
if ! run "$P/bin/moetrain_cuda_bench" --benchmark_list_tests > "$OUT/probe.txt" 2>&1; then
  grep -q "no CUDA device" "$OUT/probe.txt" || {
    echo "binaries do not load with this machine's glibc: using the carried loader" | tee -a "$OUT/env.txt"
    run() { "$P/libs/ld-linux-x86-64.so.2" --library-path "$P/libs:$cuda_dirs:/usr/lib/x86_64-linux-gnu:/usr/lib64" "$@"; }
  }
fi
cat "$OUT/probe.txt"
if [[ -n "${STRATEGIES_ONLY:-}" ]]; then
  # d_model 1024, 16 heads, 4 MoE blocks of 16 experts (hidden 2048), top-2, batch 32 x 512, bf16:
  # large enough that routing's share is not launch overhead. Each strategy as its recipe sets it;
  # top_p and null_experts (no recipe of their own) on the none recipe.
  shape=(--set model.d_model=1024 --set model.n_heads=16 --set moe.expert_hidden=2048 --set train.batch_size=32
         --set train.seq_len=512 --set train.steps=$steps --set schedule.warmup_steps=2 --set eval.every=0 --set checkpoint.every=0 --set log.every=5
         --set data.dir="$P/data/brown" --set train.device=cuda)
  runs=()
  for spec in none aux_loss loss_free_softmax sinkhorn ssr bip bip_causal quantile expert_choice \
              none:top_p none:null_experts; do
    recipe=${spec%%:*}; strategy=${spec#*:}; name=$strategy
    extra=(); [[ $spec == *:* ]] && extra=(--set router.balance=$strategy)
    [[ $strategy == null_experts ]] && extra+=(--set balance.num_null_experts=4)
    timeout 60 bash -c "$(declare -f run); P='$P' cuda_dirs='$cuda_dirs' run '$P/bin/moetrain' train recipes/balance/$recipe.toml \
      $(printf '%q ' "${shape[@]}" "${extra[@]}") --run-dir '$OUT/strategies/$name'" > "$OUT/strategy_$name.log" 2>&1
    echo "$name rc=$?"; grep -E 'error' "$OUT/strategy_$name.log" | head -3
    runs+=("$OUT/strategies/$name")
  done
  run "$P/bin/moetrain" compare "${runs[@]}" | tee "$OUT/strategies.md"
  exit 0
fi
if [[ -z "${TRAIN_ONLY:-}" && -z "${EXPERTS_ONLY:-}" ]]; then
wgmma_tests='CudaGroupedGemmSm90*:CudaWgmma*'
echo "== GPU tests (all but the wgmma ones)"
MOE_TORCH_REFERENCE_OUT="$OUT/torch_reference" \
  timeout 170 bash -c "$(declare -f run); P='$P' cuda_dirs='$cuda_dirs' run '$P/bin/moetrain_cuda_gpu_tests' --gtest_filter='-$wgmma_tests'" > "$OUT/gpu_tests.log" 2>&1
echo "gpu tests rc=$?" | tee -a "$OUT/gpu_tests.log"; grep -E '^\[  (PASSED|FAILED|SKIPPED) |FAILED  \]|GPU kernel tests on' "$OUT/gpu_tests.log" | head -40
# The wgmma kernels (sm_90a, never run on a GPU before) apart, with their own time limit: a hang
# there must not cost the other tests' or benchmarks' results.
echo "== wgmma tests"
timeout 60 bash -c "$(declare -f run); P='$P' cuda_dirs='$cuda_dirs' run '$P/bin/moetrain_cuda_gpu_tests' --gtest_filter='$wgmma_tests'" > "$OUT/gpu_wgmma_tests.log" 2>&1
echo "wgmma tests rc=$?" | tee -a "$OUT/gpu_wgmma_tests.log"; grep -E '^\[  (PASSED|FAILED|SKIPPED) |FAILED  \]' "$OUT/gpu_wgmma_tests.log" | head -20
if compgen -G "$OUT/torch_reference/*.h5" >/dev/null; then
  echo "torch reference cases written (no torch here): $(cd "$OUT/torch_reference" && ls -- *.h5 | paste -sd' ');" \
       "check them where torch is: scripts/torch_reference_offline.sh <the fetched torch_reference folder>"
fi
echo "== benchmarks"
timeout 110 bash -c "$(declare -f run); P='$P' cuda_dirs='$cuda_dirs' run '$P/bin/moetrain_cuda_bench' --benchmark_filter='-BM_ExpertsForwardBackward|kernel:[12]' --benchmark_out='$OUT/cuda_bench.json' --benchmark_out_format=json" > "$OUT/cuda_bench.log" 2>&1
echo "bench rc=$?"; tail -25 "$OUT/cuda_bench.log"
echo "== wgmma grouped GEMM benchmarks (kernel 1 wgmma, 2 wgmma2; kernel 0, the default, is above)"
timeout 60 bash -c "$(declare -f run); P='$P' cuda_dirs='$cuda_dirs' run '$P/bin/moetrain_cuda_bench' --benchmark_filter='BM_GroupedGemmVsCublas.*kernel:[12]' --benchmark_out='$OUT/cuda_bench_wgmma.json' --benchmark_out_format=json" > "$OUT/cuda_bench_wgmma.log" 2>&1
echo "wgmma bench rc=$?"; grep -E 'BM_Grouped|ERROR' "$OUT/cuda_bench_wgmma.log" | head -30
fi
if [[ -z "${TRAIN_ONLY:-}" && -z "${SKIP_EXPERTS:-}" ]]; then
echo "== experts benchmark (grouped kernel vs per-expert cuBLAS, forward + backward)"
timeout 120 bash -c "$(declare -f run); P='$P' cuda_dirs='$cuda_dirs' run '$P/bin/moetrain_cuda_bench' --benchmark_filter=BM_ExpertsForwardBackward --benchmark_out='$OUT/experts_bench.json' --benchmark_out_format=json" > "$OUT/experts_bench.log" 2>&1
echo "experts bench rc=$?"; grep -E 'BM_Experts|ERROR' "$OUT/experts_bench.log" | head -30
fi
[[ -n "${EXPERTS_ONLY:-}" ]] && exit 0
echo "== balance model, $steps steps, cuda then cpu"
for dev in cuda cpu; do
  timeout 90 bash -c "$(declare -f run); P='$P' cuda_dirs='$cuda_dirs' run '$P/bin/moetrain' train recipes/balance/aux_loss.toml \
    --set train.steps=$steps --set eval.every=0 --set checkpoint.every=0 --set log.every=1 \
    --set data.dir='$P/data/brown' --set train.device=$dev --run-dir '$OUT/$dev'" > "$OUT/train_$dev.log" 2>&1
  echo "$dev rc=$?"; grep -E 'moetrain: run|step +(1|2|10|50|100)/|error' "$OUT/train_$dev.log" | head -8
done
