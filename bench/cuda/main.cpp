// main() of build/bench/moetrain_cuda_bench: exits 77 with one line when no CUDA device can be
// used (as the GPU kernel tests), else names the GPU and runs the Google Benchmarks.
#include <benchmark/benchmark.h>

#include <cstdio>

#include "core/cuda/device.h"

int main(int argc, char** argv) {
  std::string why = moe::cuda::device_unavailable_reason();
  if (!why.empty()) {
    std::printf("no CUDA device: %s; skipping the CUDA benchmarks\n", why.c_str());
    return 77;
  }
  auto info = moe::cuda::require_device(0);
  std::printf("CUDA benchmarks on %s (sm_%d%d, %d SMs)\n", info.name.c_str(), info.major, info.minor,
              info.multiprocessors);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
