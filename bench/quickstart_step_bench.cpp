// The quickstart recipe's model (4 MoE blocks, D = 128, E = 8, k = 2, expert_hidden 256, batch
// 16 x 128) as the trainer builds it: one training step, and its parts alone (forward + backward).
#include <benchmark/benchmark.h>

#include <memory>
#include <vector>

#include "bench/train_step_util.h"
#include "core/ops.h"
#include "core/rng.h"
#include "layers/attention_layer.h"
#include "layers/moe/moe_layer.h"
#include "layers/transformer.h"
#include "optim/adamw.h"
#include "optim/clip.h"

using namespace moe;

namespace {

constexpr int64_t kBatch = 16, kSeq = 128;

ModelConfig quickstart_config() {
  ModelConfig cfg;
  cfg.vocab_size = 256;
  cfg.d_model = 128;
  cfg.n_layers = 4;
  cfg.n_heads = 4;
  cfg.use_moe = true;
  cfg.moe.num_experts = 8;
  cfg.moe.top_k = 2;
  cfg.moe.expert_hidden = 256;
  cfg.moe.z_loss_coef = 1e-3;
  cfg.moe.balance.strategy = "aux_loss";
  return cfg;
}

Tensor random_activations(uint64_t seed, int64_t d) {
  Philox rng(seed, stream_id(RngStream::test));
  Tensor t = Tensor::empty({kBatch, kSeq, d});
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = float(rng.normal());
  return t.set_requires_grad(true);
}

void set_tokens(benchmark::State& state) {
  state.counters["tokens/s"] = benchmark::Counter(double(kBatch * kSeq), benchmark::Counter::kIsIterationInvariantRate);
}

// Forward, backward, clipping and AdamW, as one trainer step without logging.
void BM_QuickstartStep(benchmark::State& state) {
  ModelConfig cfg = quickstart_config();
  Philox moe_init(1, stream_id(RngStream::init, 0, 1));
  TransformerLM model(cfg, 1, [&](int layer) { return std::make_shared<MoeLayer>(cfg, layer, moe_init); });
  model.train();
  AdamW opt(model.named_parameters());
  Tensor ids = bench::random_ids(kBatch, kSeq, cfg.vocab_size, 1),
         targets = bench::random_ids(kBatch, kSeq, cfg.vocab_size, 2);
  for (auto _ : state) benchmark::DoNotOptimize(bench::train_step(model, opt, ids, targets));
  set_tokens(state);
}
BENCHMARK(BM_QuickstartStep)->Unit(benchmark::kMillisecond)->UseRealTime();

// One attention sublayer (projections, RoPE, causal attention, output projection), x4 per step.
void BM_QuickstartAttentionFwdBwd(benchmark::State& state) {
  ModelConfig cfg = quickstart_config();
  Philox rng(1, 0);
  Attention attn(cfg, rng);
  Tensor x = random_activations(3, cfg.d_model), seed = random_activations(4, cfg.d_model).detach();
  for (auto _ : state) {
    attn.forward(x).backward(seed);
    benchmark::DoNotOptimize(x.grad().data<float>());
    x.zero_grad();
    for (auto& p : attn.parameters()) p.zero_grad();
  }
  set_tokens(state);
}
BENCHMARK(BM_QuickstartAttentionFwdBwd)->Unit(benchmark::kMillisecond)->UseRealTime();

// One MoE sublayer (router, aux and z losses, dispatch, experts, combine), x4 per step.
void BM_QuickstartMoeFwdBwd(benchmark::State& state) {
  ModelConfig cfg = quickstart_config();
  Philox rng(1, 0);
  MoeLayer layer(cfg, 0, rng);
  layer.train();
  Tensor x = random_activations(5, cfg.d_model), seed = random_activations(6, cfg.d_model).detach();
  for (auto _ : state) {
    Tensor y = layer.forward(x);
    Tensor total = sum(mul(y, seed), {0, 1, 2}, false);
    for (const ExtraLoss& e : layer.extra_losses()) total = add(total, e.scaled.reshape({}));
    total.backward();
    benchmark::DoNotOptimize(x.grad().data<float>());
    x.zero_grad();
    for (auto& p : layer.parameters()) p.zero_grad();
  }
  set_tokens(state);
}
BENCHMARK(BM_QuickstartMoeFwdBwd)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
