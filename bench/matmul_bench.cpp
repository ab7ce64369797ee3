// matmul / linear forward through the tensor layer against raw cblas_sgemm on the same sizes,
// in one binary: the difference is moetrain's overhead (checks, output allocation, dispatch).
#include <benchmark/benchmark.h>
#include <cblas.h>

#include <vector>

#include "core/ops.h"

namespace {

using moe::Tensor;

Tensor filled(int64_t rows, int64_t cols, float seed) {
  std::vector<float> v(size_t(rows * cols));
  for (size_t i = 0; i < v.size(); ++i) v[i] = float((i * 2654435761u + unsigned(seed * 977)) % 1000) / 1000.f - 0.5f;
  return Tensor::from_vector<float>(v, {rows, cols});
}

void set_counters(benchmark::State& state, int64_t n) {
  state.counters["GFLOP/s"] =
      benchmark::Counter(2.0 * double(n) * double(n) * double(n) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

// Reference: C = A B with A, B, C preallocated, row-major, no transposes.
void BM_CblasSgemm(benchmark::State& state) {
  int64_t n = state.range(0);
  Tensor a = filled(n, n, 1), b = filled(n, n, 2), c = Tensor::zeros({n, n});
  for (auto _ : state) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(n), int(n), int(n), 1.f, a.data<float>(), int(n),
                b.data<float>(), int(n), 0.f, c.data<float>(), int(n));
    benchmark::DoNotOptimize(c.data<float>());
  }
  set_counters(state, n);
}

// Reference for linear: C = X W^T, W row-major [out, in], passed with the transpose flag.
void BM_CblasSgemmNT(benchmark::State& state) {
  int64_t n = state.range(0);
  Tensor x = filled(n, n, 3), w = filled(n, n, 4), c = Tensor::zeros({n, n});
  for (auto _ : state) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(n), int(n), int(n), 1.f, x.data<float>(), int(n),
                w.data<float>(), int(n), 0.f, c.data<float>(), int(n));
    benchmark::DoNotOptimize(c.data<float>());
  }
  set_counters(state, n);
}

void BM_MoeMatmul(benchmark::State& state) {
  int64_t n = state.range(0);
  Tensor a = filled(n, n, 1), b = filled(n, n, 2);
  for (auto _ : state) {
    Tensor c = moe::matmul(a, b);
    benchmark::DoNotOptimize(c.raw_data());
  }
  set_counters(state, n);
}

void BM_MoeLinear(benchmark::State& state) {
  int64_t n = state.range(0);
  Tensor x = filled(n, n, 3), w = filled(n, n, 4);
  for (auto _ : state) {
    Tensor c = moe::linear(x, w);
    benchmark::DoNotOptimize(c.raw_data());
  }
  set_counters(state, n);
}

// 16: the fixed per-call cost of the tensor layer; 128..2048: the sizes of the overhead target.
#define MOE_MATMUL_SIZES ->Arg(16)->RangeMultiplier(2)->Range(128, 2048)->UseRealTime()->Unit(benchmark::kMicrosecond)
BENCHMARK(BM_CblasSgemm) MOE_MATMUL_SIZES;
BENCHMARK(BM_MoeMatmul) MOE_MATMUL_SIZES;
BENCHMARK(BM_CblasSgemmNT) MOE_MATMUL_SIZES;
BENCHMARK(BM_MoeLinear) MOE_MATMUL_SIZES;

}  // namespace
