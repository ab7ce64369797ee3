// The SwiGLU expert FFN forward + backward at the quickstart recipe's shapes (T k = 4096 rows,
// D = 128, H = 256, E = 8): fused expert_swiglu_ffn against the unfused grouped_matmul + swiglu.
#include <benchmark/benchmark.h>

#include <vector>

#include "core/ops.h"
#include "layers/moe/experts.h"

using namespace moe;

namespace {

constexpr int64_t kRows = 4096, kDim = 128, kHidden = 256, kExperts = 8;

std::vector<int64_t> offsets(bool skewed) {
  std::vector<int64_t> off(kExperts + 1, 0);
  for (int64_t e = 0; e < kExperts; ++e) {
    int64_t rows = skewed ? (e < 2 ? kRows / 4 : (kRows / 2) / (kExperts - 2)) : kRows / kExperts;
    off[size_t(e) + 1] = off[size_t(e)] + rows;
  }
  off.back() = kRows;
  return off;
}

Tensor param(const Shape& s, uint64_t seed) {
  Philox rng(seed, 0);
  Tensor t = Tensor::empty(s, DType::f32);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = float(rng.normal() * 0.05);
  return t.set_requires_grad(true);
}

template <bool kFused>
void BM_ExpertFfnFwdBwd(benchmark::State& state) {
  const std::vector<int64_t> off = offsets(state.range(0) == 1);
  Tensor x = param({kRows, kDim}, 1), w1 = param({kExperts, kHidden, kDim}, 2), w3 = param({kExperts, kHidden, kDim}, 3),
         w2 = param({kExperts, kDim, kHidden}, 4);
  Tensor seed = Tensor::full({kRows, kDim}, 0.01);
  for (auto _ : state) {
    Tensor y = kFused ? expert_swiglu_ffn(x, w1, w3, w2, off)
                      : grouped_matmul(swiglu(grouped_matmul(x, w1, off), grouped_matmul(x, w3, off)), w2, off);
    y.backward(seed);
    benchmark::DoNotOptimize(w1.grad().data<float>());
    for (Tensor* t : {&x, &w1, &w3, &w2}) t->zero_grad();
  }
  // Forward 3 GEMMs + backward 6, each 2 N D H FLOPs.
  state.counters["GFLOP/s"] = benchmark::Counter(9.0 * 2.0 * double(kRows) * double(kDim) * double(kHidden) * 1e-9,
                                                 benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK_TEMPLATE(BM_ExpertFfnFwdBwd, true)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_ExpertFfnFwdBwd, false)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
