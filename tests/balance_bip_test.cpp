// Strategy "bip": the dual iterations match a hand computation, paper order balances the very
// first call, and the causal order never lets a batch influence its own routing.
#include <gtest/gtest.h>

#include "layers/moe/balance/dual_prices.h"
#include "tests/balance_test_helpers.h"

using namespace moe;
using namespace moe::test;

namespace {

MoeConfig bip_config(const std::string& order, int iters = 4, int64_t E = 8, int64_t k = 2) {
  MoeConfig cfg = balance_config("bip", E, k);
  cfg.balance.bip_order = order;
  cfg.balance.bip_iters = iters;
  return cfg;
}

}  // namespace

TEST(BalanceBip, DualIterationHandComputed) {
  // k = 1, T = 4, E = 2, cap = ceil(4 / 2) = 2, q = 0:
  //   p = 2nd largest of each row = [.1, .2, .35, .4]
  //   q_0 = 3rd largest of [.8, .6, .3, .2] = .3;  q_1 = max(0, 3rd largest of [0, 0, 0, 0]) = 0
  Tensor s = Tensor::from_vector<float>({.9f, .1f, .8f, .2f, .65f, .35f, .6f, .4f}, {4, 2});
  EXPECT_EQ(balanced_capacity(4, 2, 1), 2);
  EXPECT_EQ(balanced_capacity(10, 3, 2), 7);  // kT/E = 6.67 rounds up
  std::vector<float> q(2, 0.0f);
  dual_price_iterations(s, 1, 2, 1, true, q);
  EXPECT_NEAR(q[0], 0.3, 1e-6);
  EXPECT_EQ(q[1], 0.0f);
}

TEST(BalanceBip, PaperOrderFirstCallIsBalancedWhereTopKIsNot) {
  // Measured at T = 128, E = 8, k = 2, T_bip = 4: MaxVio 0.03 (none: 2.9). Bound stated: 0.15.
  const int64_t T = 128, E = 8, k = 2;
  Philox rng;
  for (uint64_t seed = 100; seed < 105; ++seed) {
    RouterOutput in = router_output(favoured_logits(T, E, seed), E, k);
    EXPECT_GT(maxvio(loads_of(make_balancer(balance_config("none", E, k))->select(in, rng), E)), 1.0);
    EXPECT_LT(maxvio(loads_of(make_balancer(bip_config("paper"))->select(in, rng), E)), 0.15);
  }
}

TEST(BalanceBip, NearlyCollapsedRouterNeedsMoreDualIterations) {
  // Tokens that (nearly) agree can only be told apart by their noise, and the price iteration
  // gains about that much per round: with logit noise 0.1, T_bip = 32 reaches MaxVio 0.06
  // (T_bip = 4: 1.16; with noise 1e-3 even 64 rounds stay above 2, see the report).
  const int64_t T = 128, E = 8, k = 2;
  Philox rng;
  RouterOutput in = router_output(collapsed_logits(T, E, 200, 0.1), E, k);
  EXPECT_LT(maxvio(loads_of(make_balancer(bip_config("paper", 32))->select(in, rng), E)), 0.15);
}

TEST(BalanceBip, CausalOrderNeverUsesTheCurrentBatchBeforeSelectingIt) {
  const int64_t T = 64, E = 8, k = 2;
  Philox rng;
  auto causal = make_balancer(bip_config("causal"));
  auto none = make_balancer(balance_config("none", E, k));
  RouterOutput first = router_output(favoured_logits(T, E, 51), E, k);
  // q = 0 before any batch: the first batch is routed exactly like plain top-k ...
  EXPECT_EQ(causal->select(first, rng).expert.to_vector<int64_t>(), none->select(first, rng).expert.to_vector<int64_t>());
  // ... and only then moves q.
  std::vector<double> q = causal->state_vector();
  EXPECT_GT(*std::max_element(q.begin(), q.end()), 0.0);

  // Two batches that share their first half: with the same state, the causal routing of the
  // shared tokens is identical (it cannot see the rest of the batch); paper order's is not.
  std::vector<double> a = values(favoured_logits(T, E, 52)), b = values(favoured_logits(T, E, 53));
  std::copy(a.begin(), a.begin() + (T / 2) * E, b.begin());
  RouterOutput xa = router_output(Tensor::from_vector<double>(a, {T, E}).to(DType::f32), E, k);
  RouterOutput xb = router_output(Tensor::from_vector<double>(b, {T, E}).to(DType::f32), E, k);
  auto shared_half = [&](const std::string& order) {
    auto p = make_balancer(bip_config(order)), r = make_balancer(bip_config(order));
    p->load_state(causal->state());
    r->load_state(causal->state());
    std::vector<int64_t> ea = p->select(xa, rng).expert.to_vector<int64_t>();
    std::vector<int64_t> eb = r->select(xb, rng).expert.to_vector<int64_t>();
    return std::vector<int64_t>(ea.begin(), ea.begin() + T) == std::vector<int64_t>(eb.begin(), eb.begin() + T);
  };
  EXPECT_TRUE(shared_half("causal"));
  EXPECT_FALSE(shared_half("paper"));
  // The routing under causal order is top-k of (s - q_previous), q_previous from the state.
  auto c2 = make_balancer(bip_config("causal"));
  c2->load_state(causal->state());
  Tensor shifted = sub(xa.scores, Tensor::from_vector<double>(q, {E}).to(DType::f32));
  RouterOutput by_hand = xa;
  by_hand.scores = shifted;
  EXPECT_EQ(c2->select(xa, rng).expert.to_vector<int64_t>(), none->select(by_hand, rng).expert.to_vector<int64_t>());
}

TEST(BalanceBip, CausalOrderBalancesTheFollowingBatchesAndEvalKeepsQ) {
  // Measured (T = 128, E = 8, k = 2, fresh favoured batches): 2.9 on the first, then 0.16 .. 0.47.
  const int64_t T = 128, E = 8, k = 2;
  auto b = make_balancer(bip_config("causal"));
  Philox rng;
  EXPECT_GT(maxvio(loads_of(b->select(router_output(favoured_logits(T, E, 100), E, k), rng), E)), 1.0);
  for (uint64_t seed = 101; seed < 106; ++seed)
    EXPECT_LT(maxvio(loads_of(b->select(router_output(favoured_logits(T, E, seed), E, k), rng), E)), 0.6);
  std::vector<double> q = b->state_vector();
  for (double v : q) EXPECT_GE(v, 0.0);
  b->select(router_output(favoured_logits(T, E, 107), E, k, /*training=*/false), rng);
  EXPECT_EQ(b->state_vector(), q);
}
