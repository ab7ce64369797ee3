#!/usr/bin/env bash
# Runs a pack made by `scripts/bench_gpu.sh --pack` (build/gpu_pack.tar.xz: stripped GPU test and
# benchmark binaries, build/moetrain, every non-CUDA shared library down to glibc and its loader,
# data/brown) on a GPU machine that has the NVIDIA driver and CUDA 13's cudart / cuBLAS but none
# of this project's libraries.
#
#   OUT=<folder> scripts/gpu_pack_run.sh [pack.tar.xz] [steps]
#
# A lent GPU comes for minutes, so the steps run in order of importance under one deadline
# (DEADLINE seconds from the start, default 540): a step gets at most its own limit and what is
# left, and a step that would get under 10 s is skipped and says so. STEPS (default: all, in this
# order) chooses:
#   tests         the GPU test binary (all but the wgmma tests); the PyTorch reference device test
#                 writes its case files, checked by scripts/torch_reference_offline.sh with this
#                 machine's python3 where it has torch and h5py (else check them where torch is)
#   wgmma_tests   the sm_90a wgmma kernels' tests, apart: a hang there costs only its own limit
#   bench         the kernel benchmarks (cuBLAS peak, grouped GEMM kernel 0, routing, attention);
#                 BENCH_FILTER (a --benchmark_filter regex) narrows them
#   wgmma_bench   the grouped GEMM benchmark on the Hopper kernels WGMMA_KERNELS (default 245:
#                 2 wgmma2, 4 wgmma4 (the default), 5 wgmma5; 1 wgmma and 3 wgmma3 measured slower);
#                 WGMMA_FILTER (a --benchmark_filter regex) replaces its filter, e.g.
#                 'BM_GroupedGemmVsCublas/E:64/.*form:2.*kernel:4' (tn at E 64, wgmma4).
#                 WGMMA_TMA_STORES: 0 (default) the default epilogue only; both: then again with
#                 MOE_WGMMA4_TMA_STORES=1 (wgmma4 / wgmma5 overwrite through TMA bulk stores;
#                 cuda_bench_wgmma_tma.{log,json}); 1: that run only. Each row also reports the
#                 write roofline (out_bytes, write_GBps, bound_ratio) and the mixed one (in_bytes,
#                 mixed_GBps, mixed_bound_ratio: inputs read while the output is written)
#   train_cuda    the balance model (recipes/balance/aux_loss.toml), `steps` steps on the device
#   throughput    expert_choice (balanced groups by construction) at d_model 1024, 4 MoE blocks of
#                 16 experts (hidden 2048), batch 32 x 512, bf16, 30 steps: the layer's default
#                 expert path, then MOE_EXPERT_GEMM=grouped with MOE_GROUPED_GEMM = each of
#                 THROUGHPUT_KERNELS (default: per_expert wgmma2 wgmma5; per_expert = one cuBLAS GEMM per expert;
#                 flash_sync = the default kernels with MOE_FLASH_ASYNC=0 (attention's synchronous
#                 tiles), tma_stores = with MOE_WGMMA4_TMA_STORES=1 (the opt-in TMA-store epilogue));
#                 each with MOE_KERNEL_PROFILE=1 (GPU time per kernel: <run>/kernel_profile.txt)
#   strategies    every balancing strategy 30 steps at that shape on the device, then `moetrain
#                 compare` (routing_time_share, tokens_per_s per strategy) into strategies.md
#   experts       the experts benchmark (grouped kernel vs per-expert cuBLAS, rows per expert swept),
#                 the grouped side on the default kernel, then on each of EXPERTS_KERNELS (default:
#                 wgmma2 wgmma5)
#   train_cpu     the balance model on the CPU (the loss curve the device run is compared with:
#                 after both, scripts/loss_curves.py into loss_curves.txt)
#   custom        the command CUSTOM (bash, with $run, $P and $R set), for one-off checks
# Everything lands in $OUT/results.tar.xz (remade after each step, so a killed run still returns
# what it did) and the console summary in $OUT/summary.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
pack="${1:-build/gpu_pack.tar.xz}"
steps="${2:-200}"
OUT="${OUT:-/tmp/gpu_out}"
DEADLINE="${DEADLINE:-540}"
STEPS="${STEPS:-tests wgmma_tests bench wgmma_bench train_cuda throughput strategies experts train_cpu}"
BENCH_FILTER="${BENCH_FILTER:--BM_ExpertsForwardBackward|kernel:[1-9]}"
WGMMA_KERNELS="${WGMMA_KERNELS:-245}"
WGMMA_FILTER="${WGMMA_FILTER:-BM_GroupedGemmVsCublas.*kernel:[$WGMMA_KERNELS]}"
WGMMA_TMA_STORES="${WGMMA_TMA_STORES:-0}"
THROUGHPUT_KERNELS="${THROUGHPUT_KERNELS:-per_expert wgmma2 wgmma5}"
EXPERTS_KERNELS="${EXPERTS_KERNELS:-wgmma2 wgmma5}"
# Set here so moetrain does not re-exec itself to set it (a re-exec under the carried loader
# would lose the program name).
export OMP_WAIT_POLICY=passive
# The GPU tests draw fresh inputs (tests/cuda/test_seed.h): one seed for both test steps, printed
# with their results so a failure there can be drawn again (here, or under the emulation).
export MOE_TEST_SEED="${MOE_TEST_SEED:-$(( $(od -An -N4 -tu4 /dev/urandom) + 1 ))}"
mkdir -p "$OUT"
exec > >(tee "$OUT/summary.txt") 2>&1
work=$(mktemp -d)
R="$work/results"   # raw results; $OUT returns at most 8 files, so they travel as one archive
mkdir -p "$R"
tar -C "$work" -xJf "$pack" || { echo "cannot unpack $pack"; exit 1; }
P="$work/gpu_pack"
{
  date -u; cat /etc/os-release 2>/dev/null | head -2; ldd --version 2>&1 | head -1
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.total --format=csv 2>&1
  ls -d /usr/local/cuda* 2>&1; nproc
} > "$R/env.txt" 2>&1
cat "$R/env.txt"
# CUDA runtime and cuBLAS from this machine (the pack leaves them out), the driver from its usual place.
cuda_dirs=$(find /usr/local/cuda*/lib64 /usr/local/cuda*/lib /usr/local/cuda*/targets/x86_64-linux/lib /usr/lib/x86_64-linux-gnu /usr/lib64 \
  -maxdepth 1 \( -name 'libcudart.so.13*' -o -name 'libcublas.so.13*' -o -name 'libcuda.so.1' \) -printf '%h\n' 2>/dev/null | sort -u | paste -sd:)
echo "CUDA libraries from: $cuda_dirs" | tee -a "$R/env.txt"
# `$run BINARY ARGS...`: with this machine's glibc if the binaries load that way, else with the
# carried loader and glibc. A script, so that `timeout` can run it.
run="$work/run.sh"
printf '#!/bin/sh\nLD_LIBRARY_PATH="%s" exec "$@"\n' "$P/libs:$cuda_dirs" > "$run"; chmod +x "$run"
# (The probe in a subshell that outlives it: a crash's "Segmentation fault" line lands in the
# probe's file, not among the run's results.)
if ! ( "$run" "$P/bin/moetrain_cuda_bench" --benchmark_list_tests; exit $? ) > "$R/probe.txt" 2>&1; then
  grep -q "no CUDA device" "$R/probe.txt" || {
    echo "binaries do not load with this machine's glibc ($(tail -1 "$R/probe.txt" | cut -c1-100)): using the" \
      "carried loader" | tee -a "$R/env.txt"
    printf '#!/bin/sh\nexec "%s" --library-path "%s" "$@"\n' "$P/libs/ld-linux-x86-64.so.2" \
      "$P/libs:$cuda_dirs:/usr/lib/x86_64-linux-gnu:/usr/lib64" > "$run"
    ( "$run" "$P/bin/moetrain_cuda_bench" --benchmark_list_tests; exit $? ) > "$R/probe.txt" 2>&1
  }
fi
cat "$R/probe.txt"

pack_results() { tar -C "$work" --exclude='checkpoints' -cf - results | xz -1 > "$OUT/results.tar.xz.part" && mv "$OUT/results.tar.xz.part" "$OUT/results.tar.xz"; }
# limit NAME SECONDS: prints the seconds step NAME may take (its own limit or what is left of the
# deadline, keeping 15 s to pack the results), or nothing when under 10 are left.
limit() {
  local left=$((DEADLINE - SECONDS - 15))
  local t=$(($2 < left ? $2 : left))
  if ((t < 10)); then echo "== $1: skipped, ${left} s left of the ${DEADLINE} s deadline" >&2; return 1; fi
  echo "$t"
}
wanted() { [[ " $STEPS " == *" $1 "* ]]; }
# The shape of the throughput and strategy runs: large enough that routing's share is not launch
# overhead; no checkpoint (400 M parameters: 5 GB each) and a lower learning rate than the
# balance recipes' (a diverged run stops before its numbers).
big=(--set model.d_model=1024 --set model.n_heads=16 --set moe.expert_hidden=2048 --set train.batch_size=32
     --set train.seq_len=512 --set train.steps=30 --set schedule.warmup_steps=2 --set optim.lr=1e-3 --set optim.min_lr=1e-4
     --set eval.every=0 --set eval.batches=2 --set checkpoint.at_end=false --set log.every=5
     --set data.dir="$P/data/brown" --set train.device=cuda)
wgmma_tests="${WGMMA_TESTS:-CudaGroupedGemmSm90*:CudaWgmma*:CudaTma*}"
wgmma_ok=0

for step in $STEPS; do
  start=$SECONDS
  case $step in
  tests)
    t=$(limit tests 150) || continue
    echo "== GPU tests (all but the wgmma ones), limit $t s, MOE_TEST_SEED=$MOE_TEST_SEED"
    MOE_TORCH_REFERENCE_OUT="$R/torch_reference" timeout "$t" "$run" "$P/bin/moetrain_cuda_gpu_tests" \
      --gtest_filter="-$wgmma_tests" > "$R/gpu_tests.log" 2>&1
    echo "gpu tests rc=$?" | tee -a "$R/gpu_tests.log"
    grep -E '^\[  (PASSED|FAILED|SKIPPED) |FAILED  \]|GPU kernel tests on' "$R/gpu_tests.log" | head -40
    if compgen -G "$R/torch_reference/*.h5" >/dev/null; then
      echo "torch reference cases written: $(cd "$R/torch_reference" && ls -- *.h5 | paste -sd' ')"
      # This machine's own python3 may hold torch and h5py (not the carried libraries: plain env).
      py=$(command -v python3) && "$py" -c 'import torch, h5py' 2>/dev/null &&
        MOE_TORCH_REFERENCE_PYTHON="$py" timeout 60 bash scripts/torch_reference_offline.sh "$R/torch_reference"
    fi ;;
  wgmma_tests)
    t=$(limit wgmma_tests 45) || continue
    echo "== wgmma tests, limit $t s, MOE_TEST_SEED=$MOE_TEST_SEED"
    timeout "$t" "$run" "$P/bin/moetrain_cuda_gpu_tests" --gtest_filter="$wgmma_tests" > "$R/gpu_wgmma_tests.log" 2>&1
    rc=$?; [[ $rc == 0 ]] && wgmma_ok=1
    echo "wgmma tests rc=$rc" | tee -a "$R/gpu_wgmma_tests.log"
    grep -E '^\[  (PASSED|FAILED|SKIPPED) |FAILED  \]' "$R/gpu_wgmma_tests.log" | head -20 ;;
  bench)
    t=$(limit bench 90) || continue
    echo "== benchmarks, limit $t s"
    timeout "$t" "$run" "$P/bin/moetrain_cuda_bench" --benchmark_filter="$BENCH_FILTER" \
      --benchmark_out="$R/cuda_bench.json" --benchmark_out_format=json > "$R/cuda_bench.log" 2>&1
    echo "bench rc=$?"; grep -E '^BM_|ERROR' "$R/cuda_bench.log" | head -40 ;;
  wgmma_bench)
    [[ $wgmma_ok == 1 ]] || { echo "== wgmma benchmarks: skipped (the wgmma tests did not pass)"; continue; }
    case $WGMMA_TMA_STORES in both) variants="default tma" ;; 1) variants="tma" ;; *) variants="default" ;; esac
    for v in $variants; do
      t=$(limit "wgmma_bench ($v)" 120) || continue
      name=cuda_bench_wgmma; [[ $v == tma ]] && name=cuda_bench_wgmma_tma
      echo "== wgmma grouped GEMM benchmarks ($WGMMA_FILTER; epilogue: $v), limit $t s"
      MOE_WGMMA4_TMA_STORES=$([[ $v == tma ]] && echo 1 || echo 0) timeout "$t" "$run" "$P/bin/moetrain_cuda_bench" \
        --benchmark_filter="$WGMMA_FILTER" --benchmark_out="$R/$name.json" --benchmark_out_format=json > "$R/$name.log" 2>&1
      echo "wgmma bench ($v) rc=$?"; grep -E '^BM_|ERROR' "$R/$name.log" | head -60
    done ;;
  train_cuda | train_cpu)
    dev=${step#train_}
    t=$(limit "$step" 75) || continue
    echo "== balance model, $steps steps on $dev, limit $t s"
    timeout "$t" "$run" "$P/bin/moetrain" train recipes/balance/aux_loss.toml --set train.steps="$steps" \
      --set eval.every=0 --set log.every=1 --set data.dir="$P/data/brown" --set train.device="$dev" \
      --run-dir "$R/train_$dev" > "$R/train_$dev.log" 2>&1
    echo "$dev rc=$?"; grep -E 'moetrain: run|step +(1|2|10|50|100|200)/|error|done' "$R/train_$dev.log" | head -8
    # Both runs there: their loss curves compared (scripts/loss_curves.py, python3's standard library).
    if [[ -s "$R/train_cpu/metrics.jsonl" && -s "$R/train_cuda/metrics.jsonl" ]]; then
      python3 scripts/loss_curves.py "$R/train_cpu" "$R/train_cuda" > "$R/loss_curves.txt" 2>&1
      echo "loss curves rc=$?"; tail -3 "$R/loss_curves.txt"
    fi ;;
  throughput)
    echo "== throughput at d_model 1024 (expert_choice: balanced groups)"
    for kernel in default $THROUGHPUT_KERNELS; do
      [[ ($kernel == wgmma* || $kernel == tma_stores) && $wgmma_ok != 1 ]] &&
        { echo "$kernel: skipped (the wgmma tests did not pass)"; continue; }
      t=$(limit "throughput $kernel" 45) || break
      env=(MOE_KERNEL_PROFILE=1)
      case $kernel in
      default) ;;
      per_expert) env+=(MOE_EXPERT_GEMM=per_expert) ;;
      flash_sync) env+=(MOE_FLASH_ASYNC=0) ;;
      tma_stores) env+=(MOE_WGMMA4_TMA_STORES=1) ;;
      *) env+=(MOE_EXPERT_GEMM=grouped MOE_GROUPED_GEMM=$kernel) ;;
      esac
      env "${env[@]}" timeout "$t" "$run" "$P/bin/moetrain" train recipes/balance/expert_choice.toml "${big[@]}" \
        --run-dir "$R/throughput/$kernel" > "$R/throughput_$kernel.log" 2>&1
      echo "$kernel rc=$?"; grep -E 'moetrain: run|step +30/|error' "$R/throughput_$kernel.log" | head -3
      [[ $kernel == default ]] && head -14 "$R/throughput/$kernel/kernel_profile.txt" 2>/dev/null
    done ;;
  strategies)
    # Each strategy as its recipe sets it; top_p and null_experts (no recipe of their own) on the
    # none recipe.
    echo "== strategy sweep at d_model 1024"
    runs=()
    for spec in none aux_loss loss_free_softmax sinkhorn ssr bip bip_causal quantile expert_choice \
                none:top_p none:null_experts; do
      recipe=${spec%%:*}; strategy=${spec#*:}
      extra=(); [[ $spec == *:* ]] && extra=(--set router.balance="$strategy")
      [[ $strategy == null_experts ]] && extra+=(--set balance.num_null_experts=4)
      t=$(limit "strategy $strategy" 45) || break
      timeout "$t" "$run" "$P/bin/moetrain" train "recipes/balance/$recipe.toml" "${big[@]}" "${extra[@]}" \
        --run-dir "$R/strategies/$strategy" > "$R/strategy_$strategy.log" 2>&1
      echo "$strategy rc=$?"; grep -E 'error' "$R/strategy_$strategy.log" | head -3
      [[ -s "$R/strategies/$strategy/metrics.jsonl" ]] && runs+=("$R/strategies/$strategy")
    done
    ((${#runs[@]})) && "$run" "$P/bin/moetrain" compare "${runs[@]}" --markdown > "$R/strategies.md" 2>&1
    cat "$R/strategies.md" 2>/dev/null ;;
  experts)
    # The grouped side on the default kernel, then on the wgmma kernels where their tests passed.
    for kernel in default $EXPERTS_KERNELS; do
      [[ $kernel == wgmma* && $wgmma_ok != 1 ]] && continue
      t=$(limit "experts $kernel" 60) || break
      echo "== experts benchmark, grouped kernel $kernel vs per-expert cuBLAS (forward + backward), limit $t s"
      env=(); [[ $kernel != default ]] && env=(MOE_GROUPED_GEMM=$kernel)
      env "${env[@]}" timeout "$t" "$run" "$P/bin/moetrain_cuda_bench" --benchmark_filter=BM_ExpertsForwardBackward \
        --benchmark_out="$R/experts_bench_$kernel.json" --benchmark_out_format=json > "$R/experts_bench_$kernel.log" 2>&1
      echo "experts bench ($kernel) rc=$?"; grep -E '^BM_Experts|ERROR' "$R/experts_bench_$kernel.log" | head -30
    done ;;
  custom)
    # An ad-hoc command (CUSTOM, evaluated here: "$run" runs a carried binary, "$P/bin" holds them,
    # "$R" is the results folder), e.g. compute-sanitizer on one test.
    t=$(limit custom 120) || continue
    echo "== custom: $CUSTOM"
    run="$run" P="$P" R="$R" timeout "$t" bash -c "$CUSTOM" > "$R/custom.log" 2>&1
    echo "custom rc=$?"; tail -40 "$R/custom.log" ;;
  *) echo "unknown step '$step' (STEPS takes: tests wgmma_tests bench wgmma_bench train_cuda throughput strategies experts train_cpu custom)" ;;
  esac
  echo "-- $step took $((SECONDS - start)) s ($SECONDS s so far)"
  pack_results
done
pack_results
echo "results: $OUT/results.tar.xz, $(du -h "$OUT/results.tar.xz" | cut -f1)"
