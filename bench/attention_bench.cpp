// causal_attention forward + backward (f32) against a straightforward reference in the same binary:
// per-head full S x S cblas_sgemm scores, mask, softmax, P saved, four full GEMMs in backward.
#include <benchmark/benchmark.h>
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/ops.h"

using namespace moe;

namespace {

constexpr int64_t kB = 4, kH = 4, kD = 32;

// Useful FLOPs of causal attention forward + backward: six S x S x D products (QK^T, PV; dV, dP,
// dQ, dK), each counted over the causal half only: 6 * S^2 * D per head.
double useful_flops(int64_t S) { return 6.0 * double(S) * double(S) * double(kD) * double(kB * kH); }

std::vector<float> random_vector(size_t n, uint32_t seed) {
  std::vector<float> v(n);
  uint32_t s = seed;
  for (float& x : v) {
    s = s * 1664525u + 1013904223u;
    x = float(s >> 8) / float(1u << 24) - 0.5f;
  }
  return v;
}

void BM_CausalAttentionFwdBwd(benchmark::State& state) {
  int64_t S = state.range(0);
  Shape sh{kB, kH, S, kD};
  size_t n = size_t(shape_numel(sh));
  Tensor q = Tensor::from_vector(random_vector(n, 1), sh).set_requires_grad(true);
  Tensor k = Tensor::from_vector(random_vector(n, 2), sh).set_requires_grad(true);
  Tensor v = Tensor::from_vector(random_vector(n, 3), sh).set_requires_grad(true);
  Tensor seed = Tensor::from_vector(random_vector(n, 4), sh);
  for (auto _ : state) {
    Tensor out = causal_attention(q, k, v);
    out.backward(seed);
    benchmark::DoNotOptimize(q.grad().data<float>());
    q.zero_grad();
    k.zero_grad();
    v.zero_grad();
  }
  state.counters["useful_FLOPs"] = benchmark::Counter(useful_flops(S), benchmark::Counter::kIsIterationInvariantRate);
}

// The textbook version without the tensor layer: heads in sequence, BLAS threading left to OpenBLAS,
// full S x S score matrices (masked entries computed and discarded), P kept for backward.
void BM_ReferenceAttentionFwdBwd(benchmark::State& state) {
  const int64_t S = state.range(0), D = kD, BH = kB * kH, HS = S * D;
  size_t n = size_t(BH * HS);
  std::vector<float> q = random_vector(n, 1), k = random_vector(n, 2), v = random_vector(n, 3),
                     dout = random_vector(n, 4);
  std::vector<float> o(n), dq(n), dk(n), dv(n), p(size_t(BH * S * S)), dp(size_t(S * S));
  const float scale = 1.0f / std::sqrt(float(D));
  for (auto _ : state) {
    for (int64_t h = 0; h < BH; ++h) {
      float* P = p.data() + h * S * S;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(S), int(S), int(D), scale, q.data() + h * HS, int(D),
                  k.data() + h * HS, int(D), 0.f, P, int(S));
      for (int64_t i = 0; i < S; ++i) {
        float* row = P + i * S;
        float mx = *std::max_element(row, row + i + 1), sum = 0;
        for (int64_t j = 0; j <= i; ++j) sum += (row[j] = std::exp(row[j] - mx));
        for (int64_t j = 0; j <= i; ++j) row[j] /= sum;
        std::fill(row + i + 1, row + S, 0.f);
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(S), int(D), int(S), 1.f, P, int(S), v.data() + h * HS,
                  int(D), 0.f, o.data() + h * HS, int(D));
    }
    for (int64_t h = 0; h < BH; ++h) {
      const float* P = p.data() + h * S * S;
      const float* dO = dout.data() + h * HS;
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(S), int(D), int(S), 1.f, P, int(S), dO, int(D), 0.f,
                  dv.data() + h * HS, int(D));
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(S), int(S), int(D), 1.f, dO, int(D), v.data() + h * HS,
                  int(D), 0.f, dp.data(), int(S));
      for (int64_t i = 0; i < S; ++i) {
        const float* pr = P + i * S;
        float* dpr = dp.data() + i * S;
        float dot = 0;
        for (int64_t j = 0; j < S; ++j) dot += pr[j] * dpr[j];
        for (int64_t j = 0; j < S; ++j) dpr[j] = pr[j] * (dpr[j] - dot);
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(S), int(D), int(S), scale, dp.data(), int(S),
                  k.data() + h * HS, int(D), 0.f, dq.data() + h * HS, int(D));
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(S), int(D), int(S), scale, dp.data(), int(S),
                  q.data() + h * HS, int(D), 0.f, dk.data() + h * HS, int(D));
    }
    benchmark::DoNotOptimize(dq.data());
    benchmark::ClobberMemory();
  }
  state.counters["useful_FLOPs"] = benchmark::Counter(useful_flops(S), benchmark::Counter::kIsIterationInvariantRate);
}

// The sgemm rate at this size: B*H score products [S, D] x [D, S], the ceiling for one head's GEMMs.
void BM_SgemmScoresRate(benchmark::State& state) {
  const int64_t S = state.range(0), D = kD, BH = kB * kH;
  std::vector<float> a = random_vector(size_t(S * D), 5), b = random_vector(size_t(S * D), 6), c(size_t(S * S));
  for (auto _ : state) {
    for (int64_t h = 0; h < BH; ++h)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(S), int(S), int(D), 1.f, a.data(), int(D), b.data(),
                  int(D), 0.f, c.data(), int(S));
    benchmark::DoNotOptimize(c.data());
  }
  state.counters["FLOPs"] =
      benchmark::Counter(2.0 * double(S * S * D * BH), benchmark::Counter::kIsIterationInvariantRate);
}

// The attention layer's core at the quickstart shapes (B = 16, S = 128, H = 4, Dh = 32), from
// q, k, v in the projections' [B, S, H, Dh] layout: arg 1 = causal_attention_bshd reading them in
// place; arg 0 = the previous path: transposes to [B, H, S, Dh] copied contiguous (as
// causal_attention used to copy them), and the output transposed back and copied by reshape.
void BM_AttentionLayoutFwdBwd(benchmark::State& state) {
  const int64_t B = 16, S = 128, H = 4, D = 32;
  const Shape sh{B, S, H, D};
  const size_t n = size_t(shape_numel(sh));
  Tensor q = Tensor::from_vector(random_vector(n, 1), sh).set_requires_grad(true);
  Tensor k = Tensor::from_vector(random_vector(n, 2), sh).set_requires_grad(true);
  Tensor v = Tensor::from_vector(random_vector(n, 3), sh).set_requires_grad(true);
  Tensor seed = Tensor::from_vector(random_vector(n, 4), {B, S, H * D});
  for (auto _ : state) {
    Tensor out = state.range(0) == 1
                     ? causal_attention_bshd(q, k, v).reshape({B, S, H * D})
                     : causal_attention(q.transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous(),
                                        v.transpose(1, 2).contiguous())
                           .transpose(1, 2)
                           .reshape({B, S, H * D});
    out.backward(seed);
    benchmark::DoNotOptimize(q.grad().data<float>());
    q.zero_grad();
    k.zero_grad();
    v.zero_grad();
  }
  state.counters["useful_FLOPs"] = benchmark::Counter(6.0 * double(S) * double(S) * double(D) * double(B * H),
                                                      benchmark::Counter::kIsIterationInvariantRate);
}

}  // namespace

BENCHMARK(BM_AttentionLayoutFwdBwd)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_CausalAttentionFwdBwd)->Arg(128)->Arg(256)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_ReferenceAttentionFwdBwd)->Arg(128)->Arg(256)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_SgemmScoresRate)->Arg(128)->Arg(256)->Unit(benchmark::kMillisecond)->UseRealTime();
