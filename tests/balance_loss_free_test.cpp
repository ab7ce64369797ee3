// Strategy "loss_free": the bias moves by exactly +/- u toward balance (sign update), by the
// documented proportional rule otherwise, never enters the gates, and balances a hard batch.
#include <gtest/gtest.h>

#include "tests/balance_test_helpers.h"

using namespace moe;
using namespace moe::test;

TEST(BalanceLossFree, SignUpdateMovesEachBiasByExactlyU) {
  auto b = make_balancer(balance_config("loss_free", 4, 2));
  const float u = float(1e-3);
  b->update({10, 2, 4, 4});  // mean 5: expert 0 overloaded, the rest underloaded
  EXPECT_EQ(b->state_vector(), (std::vector<double>{-u, u, u, u}));
  b->update({5, 5, 5, 5});  // at the mean: no move
  EXPECT_EQ(b->state_vector(), (std::vector<double>{-u, u, u, u}));
  b->update({1, 9, 5, 5});
  EXPECT_EQ(b->state_vector(), (std::vector<double>{0, 0, u, u}));
}

TEST(BalanceLossFree, ProportionalUpdateIsRelativeViolationTimesU) {
  MoeConfig cfg = balance_config("loss_free", 4, 2);
  cfg.balance.bias_update = "proportional";
  cfg.balance.bias_update_rate = 0.1;
  auto b = make_balancer(cfg);
  b->update({10, 2, 4, 4});  // (5 - load) / 5 = [-1, .6, .2, .2]
  std::vector<double> s = b->state_vector();
  const double want[4] = {-0.1, 0.06, 0.02, 0.02};
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(s[size_t(i)], want[i], 1e-8);
}

TEST(BalanceLossFree, BiasChangesSelectionButNeverTheGates) {
  const int64_t T = 48, E = 6, k = 2;
  MoeConfig cfg = balance_config("loss_free", E, k);
  cfg.balance.bias_update_rate = 0.05;
  auto b = make_balancer(cfg);
  auto none = make_balancer(balance_config("none", E, k));
  RouterOutput in = router_output(favoured_logits(T, E, 12), E, k);
  Philox rng;
  Routing r0 = b->select(in, rng), rn = none->select(in, rng);
  EXPECT_EQ(values(r0.gate), values(rn.gate));  // zero bias: exactly plain top-k
  for (int step = 0; step < 30; ++step) b->update(loads_of(b->select(in, rng), E));
  Routing r = b->select(in, rng);
  EXPECT_NE(r.expert.to_vector<int64_t>(), rn.expert.to_vector<int64_t>());  // the bias re-routed tokens
  // gates are the unbiased scores of the chosen experts, renormalized over the token's two
  std::vector<double> s = values(in.scores), g = values(r.gate);
  std::vector<int64_t> e = r.expert.to_vector<int64_t>();
  for (int64_t t = 0; t < T; ++t) {
    double a = s[size_t(t * E + e[size_t(2 * t)])], c = s[size_t(t * E + e[size_t(2 * t + 1)])];
    EXPECT_NEAR(g[size_t(2 * t)], a / (a + c), 1e-6);
    EXPECT_NEAR(g[size_t(2 * t + 1)], c / (a + c), 1e-6);
  }
}

TEST(BalanceLossFree, RepeatedUpdatesBalanceAFavouredExpert) {
  const int64_t T = 256, E = 8, k = 2;
  MoeConfig cfg = balance_config("loss_free", E, k);
  cfg.balance.bias_update_rate = 1e-2;
  auto b = make_balancer(cfg);
  RouterOutput in = router_output(favoured_logits(T, E, 13), E, k);
  Philox rng;
  double first = maxvio(loads_of(b->select(in, rng), E)), last = 0;
  for (int step = 0; step < 200; ++step) {
    std::vector<double> l = loads_of(b->select(in, rng), E);
    last = maxvio(l);
    b->update(l);
  }
  EXPECT_GT(first, 1.0);
  EXPECT_LT(last, 0.25);
}

TEST(BalanceLossFree, StateRoundTripsBitExactly) {
  MoeConfig cfg = balance_config("loss_free", 5, 2);
  cfg.balance.bias_update = "proportional";
  auto a = make_balancer(cfg);
  a->update({1, 7, 3, 0, 9});
  a->update({2, 2, 8, 3, 5});
  auto b = make_balancer(cfg);
  b->load_state(a->state());
  EXPECT_EQ(b->state(), a->state());
  RouterOutput in = router_output(randn_f32({16, 5}, 9), 5, 2);
  Philox rng;
  EXPECT_EQ(a->select(in, rng).expert.to_vector<int64_t>(), b->select(in, rng).expert.to_vector<int64_t>());
  EXPECT_THROW(b->load_state({{"bias", {1, 2}}}), Error);
}
