#!/usr/bin/env bash
# GPU benchmarks of the CUDA kernels: the GPU kernel tests (ctest -L gpu), then
# build/bench/moetrain_cuda_bench (every benchmark, BM_ExpertsForwardBackward included, unless
# MOE_BENCH_FILTER says otherwise), and a markdown summary of its counters (for docs/benchmarks.md).
#
#   scripts/bench_gpu.sh [build_dir]        build (when cmake is there) and run; exit 77 without a GPU
#   scripts/bench_gpu.sh --pack [build_dir] on the build machine: build_dir/gpu_pack.tar.xz (~23 MiB),
#                                           the binaries with every library they need, for a GPU
#                                           machine without them; run it there with scripts/gpu_pack_run.sh
# Environment: MOE_BENCH_FILTER (a --benchmark_filter regex), OUT (a folder for the raw JSON and logs;
# default build_dir/gpu_bench).
set -euo pipefail
cd "$(dirname "$0")/.."
pack=0
if [[ "${1:-}" == "--pack" ]]; then pack=1; shift; fi
B="${1:-build}"
bench="$B/bench/moetrain_cuda_bench"
tests="$B/tests/moetrain_cuda_gpu_tests"

if command -v cmake >/dev/null && { [[ $pack == 1 ]] || [[ ! -x "$bench" ]]; }; then
  cmake -S . -B "$B" -DCMAKE_BUILD_TYPE=Release -DMOE_CUDA=ON >/dev/null
  cmake --build "$B" -j"$(nproc)" --target moetrain_cuda_bench moetrain_cuda_gpu_tests moetrain
fi
[[ -x "$bench" ]] || { echo "bench_gpu.sh: $bench not built (needs the CUDA toolkit: cmake -DMOE_CUDA=ON)"; exit 1; }

if [[ $pack == 1 ]]; then
  # One archive for a GPU machine that has the driver and CUDA 13 but none of our libraries (nor
  # Debian's glibc): stripped binaries, every non-CUDA shared library down to glibc and its
  # loader, and the prepared Brown corpus; scripts/gpu_pack_run.sh runs it there.
  # The CLI without NCCL: libnccl (218 MB) would not fit the carry limit, and a one-GPU machine
  # needs no NCCL. The build dir gets its NCCL CLI back at the end.
  cmake -S . -B "$B" -DMOE_CLI_NCCL=OFF >/dev/null
  trap 'cmake -S . -B "$B" -DMOE_CLI_NCCL=ON >/dev/null' EXIT
  cmake --build "$B" -j"$(nproc)" --target moetrain
  if ldd "$B/moetrain" | grep -q libnccl; then echo "bench_gpu.sh: $B/moetrain still links libnccl"; exit 1; fi
  [[ -f data/brown/DONE ]] || "$B/moetrain" prepare brown --out data/brown
  rm -rf "$B/gpu_pack" && mkdir -p "$B/gpu_pack/bin" "$B/gpu_pack/libs" "$B/gpu_pack/data"
  cp "$bench" "$tests" "$B/moetrain" "$B/gpu_pack/bin/" && strip --strip-unneeded "$B"/gpu_pack/bin/*
  ldd "$bench" "$tests" "$B/moetrain" 2>/dev/null | awk '/=> \// {print $3}' | sort -u |
    grep -Ev '/(libcuda|libcudart|libcublas|libcublasLt)\.so' | while read -r lib; do cp -L "$lib" "$B/gpu_pack/libs/"; done
  cp -L /lib64/ld-linux-x86-64.so.2 "$B/gpu_pack/libs/"
  mkdir -p "$B/gpu_pack/data/brown" && cp -L data/brown/* "$B/gpu_pack/data/brown/"
  tar -C "$B" -cf - gpu_pack | xz -2 -T"$(nproc)" > "$B/gpu_pack.tar.xz"
  du -sh "$B/gpu_pack.tar.xz"
  echo "carry $B/gpu_pack.tar.xz (an ignored path); run there: scripts/gpu_pack_run.sh $B/gpu_pack.tar.xz 200"
  exit 0
fi

out="${OUT:-$B/gpu_bench}"
mkdir -p "$out"

# Without a device the benchmark prints one "no CUDA device: ..." line and exits 77: pass it on.
set +e
"$bench" --benchmark_list_tests >/dev/null 2>"$out/probe.err"
rc=$?
set -e
if [[ $rc == 77 ]]; then "$bench" | head -1 || true; exit 77; fi
[[ $rc == 0 ]] || { cat "$out/probe.err"; exit $rc; }
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv | tee "$out/nvidia_smi.csv"

# The GPU kernel tests: through ctest where the build dir was configured here, else the binary itself.
tests_rc=0
if [[ -f "$B/CTestTestfile.cmake" ]] && grep -q "$PWD" "$B/CTestTestfile.cmake"; then
  ctest --test-dir "$B" -L gpu --output-on-failure 2>&1 | tee "$out/ctest_gpu.log" || tests_rc=$?
elif [[ -x "$tests" ]]; then
  "$tests" 2>&1 | tee "$out/ctest_gpu.log" || tests_rc=$?
else
  echo "bench_gpu.sh: $tests not built: GPU kernel tests not run" | tee "$out/ctest_gpu.log"; tests_rc=1
fi

rm -f "$out/cuda_bench.json"
"$bench" --benchmark_out="$out/cuda_bench.json" --benchmark_out_format=json \
  ${MOE_BENCH_FILTER:+--benchmark_filter="$MOE_BENCH_FILTER"} 2>&1 | tee "$out/cuda_bench.log" || tests_rc=$?
[[ -s "$out/cuda_bench.json" ]] || { echo "bench_gpu.sh: no $out/cuda_bench.json (the benchmark run failed)"; exit 1; }

# The markdown summary (plain python3: json only).
python3 - "$out/cuda_bench.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
ctx = d.get("context", {})
print(f"\n### CUDA benchmarks ({ctx.get('date', '')}, host {ctx.get('host_name', '')})\n")
rows, errors = {}, []
for b in d["benchmarks"]:
    if b.get("run_type") == "aggregate": continue
    if b.get("error_occurred"):
        errors.append(f"- {b['name']}: ERROR {b.get('error_message', '')}"); continue
    rows.setdefault(b["name"].split("/")[0], []).append(b)
def f(x, n=1): return f"{x:.{n}f}"
def args(b): return b["name"].split("/", 1)[1].rsplit("/iterations", 1)[0].replace("/manual_time", "")
if "BM_CublasBf16Gemm" in rows:
    print("| cuBLAS bf16 GEMM (n = m = k) | ms | TFLOP/s |\n|---|---|---|")
    for b in rows["BM_CublasBf16Gemm"]: print(f"| {args(b)} | {f(b['ms'], 3)} | {f(b['TFLOP/s'])} |")
    peak = max(b["TFLOP/s"] for b in rows["BM_CublasBf16Gemm"])
    print(f"\nMeasured bf16 peak (MFU denominator): **{f(peak)} TFLOP/s**\n")
if "BM_GroupedGemmVsCublas" in rows:
    print("| grouped GEMM (form 0 nt fwd, 1 nn dgrad, 2 tn wgrad; kernel 0 wmma (default), 1 wgmma, 2 wgmma2) | dense TFLOP/s | grouped TFLOP/s | ratio (>= 0.70) |\n|---|---|---|---|")
    for b in rows["BM_GroupedGemmVsCublas"]:
        ok = "ok" if b["ratio"] >= 0.70 else "BELOW"
        print(f"| {args(b)} | {f(b['dense_TFLOP/s'])} | {f(b['grouped_TFLOP/s'])} | {f(b['ratio'], 2)} {ok} |")
    print()
if "BM_RoutingShare" in rows:
    print("| routing (0 topk, 1 bip, 2 sinkhorn) | routing ms | FFN fwd ms | share (< 0.05) |\n|---|---|---|---|")
    for b in rows["BM_RoutingShare"]:
        ok = "ok" if b["share"] < 0.05 else "ABOVE"
        extra = f" ({int(b['sinkhorn_iters'])} iters)" if "sinkhorn_iters" in b else ""
        print(f"| {args(b)}{extra} | {f(b['routing_ms'], 3)} | {f(b['ffn_fwd_ms'], 3)} | {f(b['share'], 3)} {ok} |")
    print()
if "BM_FlashAttentionBf16" in rows:
    print("| flash attention bf16, B 8, S 1024, width 1024 | fwd ms | bwd ms | fwd+bwd tokens/s | fwd TFLOP/s | bwd TFLOP/s |\n|---|---|---|---|---|---|")
    for b in rows["BM_FlashAttentionBf16"]:
        print(f"| {args(b)} | {f(b['fwd_ms'], 3)} | {f(b['bwd_ms'], 3)} | {b['fwd+bwd_tokens/s']:.3g} | {f(b['fwd_TFLOP/s'])} | {f(b['bwd_TFLOP/s'])} |")
if "BM_ExpertsForwardBackward" in rows:
    print("\n| experts fwd + bwd, balanced groups | grouped ms | per-expert ms | per-expert / grouped (> 1: grouped faster) | grouped TFLOP/s | per-expert TFLOP/s | the layer picks |\n|---|---|---|---|---|---|---|")
    for b in rows["BM_ExpertsForwardBackward"]:
        pick = "grouped" if b["layer_picks_grouped"] else "per expert"
        wrong = (b["ratio"] > 1) != bool(b["layer_picks_grouped"])
        print(f"| {args(b)} | {f(b['grouped_ms'], 3)} | {f(b['per_expert_ms'], 3)} | {f(b['ratio'], 2)} | "
              f"{f(b['grouped_TFLOP/s'])} | {f(b['per_expert_TFLOP/s'])} | {pick}{' (the slower)' if wrong else ''} |")
if errors: print("\nBenchmarks that failed:\n" + "\n".join(errors))
PY
echo "GPU kernel tests and benchmark run: $([[ $tests_rc == 0 ]] && echo passed || echo "FAILED (rc $tests_rc)"); raw results in $out"
exit $tests_rc
