// Helpers of the GPU benchmarks: CUDA error checks, seeded random device arrays, and event
// timing of a batch of calls (after warm-up, the median over several batches).
#pragma once
#include <benchmark/benchmark.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/cuda/memory.h"
#include "core/dtype.h"

namespace moe::bench {

inline void cuda_check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string("CUDA bench: ") + what + ": " + cudaGetErrorString(e));
}

// Uniform in [-scale, scale), seeded: never zeros (they can run faster than real data).
inline std::vector<float> random_floats(size_t n, float scale, uint64_t seed) {
  std::vector<float> v(n);
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  for (auto& x : v) {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;  // xorshift64: gigabytes of inputs in a second
    x = scale * (float((s >> 40) & 0xFFFFFF) / float(1 << 23) - 1.0f);
  }
  return v;
}
inline cuda::DeviceBuffer<bf16> random_bf16(size_t n, float scale, uint64_t seed) {
  auto f = random_floats(n, scale, seed);
  std::vector<bf16> h(n);
  for (size_t i = 0; i < n; ++i) h[i] = float_to_bf16(f[i]);
  return cuda::DeviceBuffer<bf16>(h);
}
inline cuda::DeviceBuffer<float> random_f32(size_t n, float scale, uint64_t seed) {
  return cuda::DeviceBuffer<float>(random_floats(n, scale, seed));
}

// Device milliseconds per call of fn: `warmup` calls, then `batches` event-timed batches of `reps`
// back-to-back calls (launch gaps of small kernels hidden by the queue); the median batch / reps.
inline double time_ms(const std::function<void()>& fn, int reps, int batches = 5, int warmup = 3) {
  for (int i = 0; i < warmup; ++i) fn();
  cuda_check(cudaDeviceSynchronize(), "warm-up");
  cudaEvent_t start, stop;
  cuda_check(cudaEventCreate(&start), "cudaEventCreate");
  cuda_check(cudaEventCreate(&stop), "cudaEventCreate");
  std::vector<double> ms;
  for (int b = 0; b < batches; ++b) {
    cuda_check(cudaEventRecord(start), "cudaEventRecord");
    for (int r = 0; r < reps; ++r) fn();
    cuda_check(cudaEventRecord(stop), "cudaEventRecord");
    cuda_check(cudaEventSynchronize(stop), "cudaEventSynchronize");
    float t = 0;
    cuda_check(cudaEventElapsedTime(&t, start, stop), "cudaEventElapsedTime");
    ms.push_back(double(t) / reps);
  }
  cuda_check(cudaGetLastError(), "after the timed calls");
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// A benchmark body whose error (a failed check, a CUDA fault) skips that benchmark with the message
// instead of terminating the whole run: BENCHMARK(guarded<BM_x>)->Name("BM_x").
template <void (*Body)(benchmark::State&)>
void guarded(benchmark::State& state) {
  try {
    Body(state);
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
}

// Expert row offsets [E + 1] for `rows` rows: equal groups, or skewed (Zipf, size of expert e
// proportional to 1 / (e + 1); the largest gets ~ rows / ln E), the remainder to expert 0.
inline std::vector<int32_t> group_offsets(long rows, int experts, bool skewed) {
  std::vector<double> w(experts, 1.0);
  if (skewed)
    for (int e = 0; e < experts; ++e) w[e] = 1.0 / (e + 1);
  double sum = 0;
  for (double x : w) sum += x;
  std::vector<long> size(experts);
  long used = 0;
  for (int e = 0; e < experts; ++e) used += size[e] = long(rows * w[e] / sum);
  size[0] += rows - used;
  std::vector<int32_t> off(experts + 1, 0);
  for (int e = 0; e < experts; ++e) off[e + 1] = off[e] + int32_t(size[e]);
  return off;
}

}  // namespace moe::bench
