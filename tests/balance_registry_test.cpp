// make_balancer: every strategy builds by name, invalid settings are refused with the recipe
// key in the message, and every strategy's state round-trips bit-exactly through state().
#include <gtest/gtest.h>

#include <cmath>
#include <functional>

#include "tests/balance_test_helpers.h"

using namespace moe;
using namespace moe::test;

namespace {

const std::vector<std::string> kStrategies = {"none", "aux_loss", "loss_free", "sinkhorn", "ssr",
                                              "bip", "quantile", "expert_choice", "null_experts", "top_p"};

MoeConfig valid_config(const std::string& strategy) {
  MoeConfig cfg = balance_config(strategy, 6, 2);
  cfg.balance.num_null_experts = 2;
  cfg.balance.ssr_probability = 0.5;
  cfg.balance.quantile_rate = 0.5;
  cfg.balance.aux_variant = "global";
  return cfg;
}

std::string error_of(const MoeConfig& cfg) {
  try {
    make_balancer(cfg);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST(BalanceRegistry, EveryStrategyBuildsByName) {
  for (const auto& s : kStrategies) EXPECT_EQ(make_balancer(valid_config(s))->name(), s);
}

TEST(BalanceRegistry, UnknownStrategyListsTheValidOnes) {
  std::string msg = error_of(balance_config("sinkorn"));
  EXPECT_EQ(msg.rfind("router.balance: unknown strategy 'sinkorn'", 0), 0u) << msg;
  for (const auto& s : kStrategies) EXPECT_NE(msg.find(s), std::string::npos) << s;
}

TEST(BalanceRegistry, InvalidSettingsThrowNamingTheKey) {
  struct Case {
    std::string strategy, key;
    std::function<void(MoeConfig&)> set;
  };
  const std::vector<Case> cases = {
      {"none", "router.top_k", [](MoeConfig& c) { c.top_k = 0; }},
      {"none", "router.top_k", [](MoeConfig& c) { c.top_k = 7; }},  // E = 6
      {"null_experts", "router.top_k", [](MoeConfig& c) { c.top_k = 9; }},  // E + 2 nulls = 8
      {"none", "router.num_experts", [](MoeConfig& c) { c.num_experts = 0; }},
      {"none", "router.score_function", [](MoeConfig& c) { c.score_function = "tanh"; }},
      {"none", "router.gate_scale", [](MoeConfig& c) { c.gate_scale = 0; }},
      {"aux_loss", "router.aux_alpha", [](MoeConfig& c) { c.balance.aux_alpha = -1e-2; }},
      {"aux_loss", "router.aux_variant", [](MoeConfig& c) { c.balance.aux_variant = "per_batch"; }},
      {"loss_free", "router.bias_update_rate", [](MoeConfig& c) { c.balance.bias_update_rate = -1e-3; }},
      {"loss_free", "router.bias_update", [](MoeConfig& c) { c.balance.bias_update = "linear"; }},
      {"sinkhorn", "router.sinkhorn_temperature", [](MoeConfig& c) { c.balance.sinkhorn_temperature = 0; }},
      {"sinkhorn", "router.sinkhorn_max_iters", [](MoeConfig& c) { c.balance.sinkhorn_max_iters = 0; }},
      {"sinkhorn", "router.sinkhorn_tol", [](MoeConfig& c) { c.balance.sinkhorn_tol = -1; }},
      {"ssr", "router.ssr_probability", [](MoeConfig& c) { c.balance.ssr_probability = 1.5; }},
      {"bip", "router.bip_iters", [](MoeConfig& c) { c.balance.bip_iters = 0; }},
      {"bip", "router.bip_order", [](MoeConfig& c) { c.balance.bip_order = "reverse"; }},
      {"quantile", "router.quantile_rate", [](MoeConfig& c) { c.balance.quantile_rate = 0; }},
      {"expert_choice", "router.expert_choice_capacity", [](MoeConfig& c) { c.balance.expert_choice_capacity = 0; }},
      {"expert_choice", "router.expert_choice_capacity", [](MoeConfig& c) { c.balance.expert_choice_capacity = -2; }},
      {"expert_choice", "router.expert_choice_capacity", [](MoeConfig& c) { c.balance.expert_choice_capacity = 7; }},
      {"null_experts", "router.num_null_experts", [](MoeConfig& c) { c.balance.num_null_experts = 0; }},
      {"null_experts", "router.null_aux_alpha", [](MoeConfig& c) { c.balance.null_aux_alpha = -1; }},
      {"null_experts", "router.score_function", [](MoeConfig& c) { c.score_function = "sigmoid"; }},
      {"top_p", "router.top_p_threshold", [](MoeConfig& c) { c.balance.top_p_threshold = 0; }},
      {"top_p", "router.top_p_entropy_beta", [](MoeConfig& c) { c.balance.top_p_entropy_beta = -1; }},
      {"top_p", "router.score_function", [](MoeConfig& c) { c.score_function = "sigmoid"; }},
  };
  for (const auto& c : cases) {
    MoeConfig cfg = valid_config(c.strategy);
    c.set(cfg);
    std::string msg = error_of(cfg);
    EXPECT_EQ(msg.rfind(c.key + ":", 0), 0u) << c.strategy << " -> " << msg;
  }
}

TEST(BalanceRegistry, BadRouterOutputIsRefusedWithShapes) {
  auto b = make_balancer(balance_config("none", 4, 2));
  Philox rng;
  try {
    b->select(router_output(randn_f32({5, 3}, 1), 4, 2), rng);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[5, 3]"), std::string::npos) << e.what();
  }
  std::vector<float> v(20, 0.1f);
  v[7] = NAN;
  RouterOutput in = router_output(Tensor::from_vector<float>(v, {5, 4}), 4, 2);
  in.scores = in.logits;
  EXPECT_THROW(b->select(in, rng), Error);
}

TEST(BalanceRegistry, StateRoundTripsBitExactlyForEveryStrategy) {
  for (const auto& s : kStrategies) {
    MoeConfig cfg = valid_config(s);
    auto a = make_balancer(cfg);
    const int64_t E = cfg.num_experts, Er = a->router_outputs(E);
    Philox rng(3, stream_id(RngStream::ssr), 0);
    auto step = [&](Balancer& b, Philox& r, uint64_t seed, bool end_of_step = true) {
      RouterOutput in = router_output(favoured_logits(24, Er, seed), E, 2, true, 12);
      Routing rt = b.select(in, r);
      b.extra_losses(in, rt);
      if (end_of_step) b.update(loads_of(rt, E));
      return rt;
    };
    for (uint64_t seed = 1; seed <= 3; ++seed) step(*a, rng, seed);
    step(*a, rng, 4, /*end_of_step=*/false);  // saved mid-step: aux global holds a partial sum
    if (s == "aux_loss") {
      EXPECT_NE(a->state().at("global_load_accumulator"), std::vector<double>(size_t(E), 0.0));
    }
    auto b = make_balancer(cfg);
    b->load_state(a->state());
    EXPECT_EQ(b->state(), a->state()) << s;
    EXPECT_EQ(b->state_vector(), a->state_vector()) << s;
    Philox ra = rng, rb = rng;
    Routing x = step(*a, ra, 9), y = step(*b, rb, 9);
    EXPECT_EQ(x.expert.to_vector<int64_t>(), y.expert.to_vector<int64_t>()) << s;
    EXPECT_EQ(values(x.gate), values(y.gate)) << s;
    EXPECT_EQ(b->state(), a->state()) << s;
  }
  // stateful strategies say what they keep
  EXPECT_EQ(make_balancer(valid_config("loss_free"))->state().count("bias"), 1u);
  EXPECT_EQ(make_balancer(valid_config("bip"))->state().count("q"), 1u);
  EXPECT_EQ(make_balancer(valid_config("quantile"))->state().count("beta"), 1u);
  EXPECT_EQ(make_balancer(valid_config("aux_loss"))->state().count("global_load_accumulator"), 1u);
}
