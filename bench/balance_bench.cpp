// Routing cost of every balancing strategy: select() + extra_losses() on T = 4096 tokens,
// E = 16 experts, k = 2, random N(0,1) logits, training mode, recording on (as in training).
#include <benchmark/benchmark.h>

#include <functional>

#include "core/ops.h"
#include "layers/moe/balance/balancer.h"

namespace moe {
namespace {

constexpr int64_t kTokens = 4096, kExperts = 16, kTopK = 2, kSeqLen = 256;

struct Variant {
  std::string label;
  std::function<void(MoeConfig&)> set;
};

void run_strategy(benchmark::State& state, const std::string& strategy, const std::function<void(MoeConfig&)>& set) {
  MoeConfig cfg;
  cfg.num_experts = kExperts;
  cfg.top_k = kTopK;
  cfg.balance.strategy = strategy;
  cfg.balance.num_null_experts = 4;
  if (set) set(cfg);
  auto balancer = make_balancer(cfg);
  const int64_t outputs = balancer->router_outputs(kExperts);
  Philox init(7, stream_id(RngStream::test), 0);
  std::vector<float> x(size_t(kTokens * outputs));
  for (float& v : x) v = float(init.normal());
  Tensor logits = Tensor::from_vector<float>(x, {kTokens, outputs});
  logits.set_requires_grad(true);
  RouterOutput in;
  in.logits = logits;
  in.scores = softmax(logits, -1);  // the router's work, not timed
  in.num_experts = kExperts;
  in.top_k = kTopK;
  in.seq_len = kSeqLen;
  in.training = true;
  Philox rng(11, stream_id(RngStream::ssr), 0);
  for (auto _ : state) {
    Routing r = balancer->select(in, rng);
    std::vector<ExtraLoss> losses = balancer->extra_losses(in, r);
    benchmark::DoNotOptimize(r.gate.raw_data());
    clear_tape();  // the gate / loss nodes recorded by this call (the layer's backward would consume them)
  }
  state.counters["tokens_per_s"] = benchmark::Counter(double(kTokens), benchmark::Counter::kIsIterationInvariantRate);
}

const bool registered = [] {
  const std::vector<std::pair<std::string, Variant>> list = {
      {"none", {"", nullptr}},
      {"aux_loss", {"micro_batch", nullptr}},
      {"aux_loss", {"per_sequence", [](MoeConfig& c) { c.balance.aux_variant = "per_sequence"; }}},
      {"loss_free", {"", nullptr}},
      {"sinkhorn", {"xi=1", nullptr}},
      {"ssr", {"p=0.001", nullptr}},
      {"ssr", {"p=1,xi=0.05", [](MoeConfig& c) {
                 c.balance.ssr_probability = 1.0;
                 c.balance.sinkhorn_temperature = 0.05;
               }}},
      {"bip", {"paper,T_bip=4", nullptr}},
      {"bip", {"causal,T_bip=4", [](MoeConfig& c) { c.balance.bip_order = "causal"; }}},
      {"quantile", {"", nullptr}},
      {"expert_choice", {"c=2", nullptr}},
      {"null_experts", {"n_null=4", nullptr}},
      {"top_p", {"p=0.4", nullptr}},
  };
  for (const auto& [strategy, v] : list) {
    std::string name = "BalanceSelect/" + strategy + (v.label.empty() ? "" : "/" + v.label);
    auto set = v.set;
    benchmark::RegisterBenchmark(name.c_str(), [strategy, set](benchmark::State& s) { run_strategy(s, strategy, set); })
        ->Unit(benchmark::kMicrosecond)
        ->MinTime(0.2);
  }
  return true;
}();

}  // namespace
}  // namespace moe
