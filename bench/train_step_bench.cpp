// One full training step (forward + backward + clip + AdamW) of a small dense model, and its
// reference: the same step's matrix products alone as raw cblas_sgemm calls (the BLAS roof).
#include <benchmark/benchmark.h>
#include <cblas.h>

#include <vector>

#include "bench/train_step_util.h"
#include "core/ops.h"
#include "core/rng.h"
#include "layers/mlp.h"
#include "layers/transformer.h"
#include "optim/adamw.h"
#include "optim/clip.h"

using namespace moe;

namespace {

// D=128, 4 layers, 4 heads, S=128, B=8, V=256 (byte-level): about 1 M parameters.
ModelConfig bench_config() {
  ModelConfig cfg;
  cfg.vocab_size = 256;
  cfg.d_model = 128;
  cfg.n_layers = 4;
  cfg.n_heads = 4;
  cfg.max_seq_len = 128;
  return cfg;
}
constexpr int64_t kBatch = 8, kSeq = 128;

void BM_TrainStepDense(benchmark::State& state) {
  ModelConfig cfg = bench_config();
  TransformerLM model(cfg, 1);
  AdamW opt(model.named_parameters());
  Tensor ids = bench::random_ids(kBatch, kSeq, cfg.vocab_size, 1),
         targets = bench::random_ids(kBatch, kSeq, cfg.vocab_size, 2);
  for (auto _ : state) benchmark::DoNotOptimize(bench::train_step(model, opt, ids, targets));
  state.counters["tokens/s"] = benchmark::Counter(double(kBatch * kSeq), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["params"] = double(model.num_parameters());
}
BENCHMARK(BM_TrainStepDense)->Unit(benchmark::kMillisecond)->UseRealTime();

// The GEMMs of one step at the shapes the model runs them: per linear y = x W^T, its forward
// plus the two backward products (dx = dy W, dW = dy^T x); per attention head the four
// products of forward (QK^T, PV) and the four of backward, full S x S (no causal skipping). Everything else (norms, softmax,
// RoPE, element-wise, optimizer, framework) is what BM_TrainStepDense adds on top.
void BM_TrainStepGemmsOnlyReference(benchmark::State& state) {
  ModelConfig cfg = bench_config();
  const int64_t T = kBatch * kSeq, D = cfg.d_model, F = dense_hidden_size(cfg), V = cfg.vocab_size;
  const int64_t H = cfg.n_heads, Dh = D / H, S = kSeq;
  struct Gemm { int64_t m, n, k, count; };
  std::vector<Gemm> gemms;
  auto linear3 = [&](int64_t in, int64_t out, int64_t count) {
    gemms.push_back({T, out, in, count});   // forward
    gemms.push_back({T, in, out, count});   // dx
    gemms.push_back({out, in, T, count});   // dW
  };
  linear3(D, D, 4 * cfg.n_layers);   // wq wk wv wo
  linear3(D, F, 2 * cfg.n_layers);   // w1 w3
  linear3(F, D, cfg.n_layers);       // w2
  linear3(D, V, 1);                  // lm head
  const int64_t heads = kBatch * H * cfg.n_layers;
  gemms.push_back({S, S, Dh, 2 * heads});   // QK^T, dP = dO V^T
  gemms.push_back({S, Dh, S, 4 * heads});   // PV, dV = P^T dO, dQ = dS K, dK = dS^T Q
  size_t max_elems = 0;
  for (auto& g : gemms) max_elems = std::max({max_elems, size_t(g.m * g.k), size_t(g.k * g.n), size_t(g.m * g.n)});
  std::vector<float> a(max_elems, 0.01f), b(max_elems, 0.02f), c(max_elems, 0.0f);
  double flops = 0;
  for (auto& g : gemms) flops += 2.0 * double(g.m * g.n * g.k * g.count);
  for (auto _ : state) {
    for (auto& g : gemms)
      for (int64_t i = 0; i < g.count; ++i)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(g.m), int(g.n), int(g.k), 1.0f, a.data(), int(g.k),
                    b.data(), int(g.n), 0.0f, c.data(), int(g.n));
    benchmark::DoNotOptimize(c.data());
  }
  state.counters["tokens/s"] = benchmark::Counter(double(T), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GFLOP/s"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_TrainStepGemmsOnlyReference)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
