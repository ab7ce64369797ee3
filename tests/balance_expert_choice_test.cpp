// Strategy "expert_choice": every expert takes exactly C = ceil(T c / E) tokens, its highest
// scores (ties to the lower token), with gates equal to those scores.
#include <gtest/gtest.h>

#include "tests/balance_test_helpers.h"

using namespace moe;
using namespace moe::test;

TEST(BalanceExpertChoice, EveryExpertTakesExactlyCTokensOnHardMatrices) {
  const int64_t T = 50, E = 8;
  auto b = make_balancer(balance_config("expert_choice", E, 2));  // c = 2: C = ceil(100 / 8) = 13
  Philox rng;
  for (Tensor x : {favoured_logits(T, E, 61), collapsed_logits(T, E, 62)}) {
    RouterOutput in = router_output(x, E, 2);
    Routing r = b->select(in, rng);
    EXPECT_EQ(loads_of(r, E), std::vector<double>(size_t(E), 13.0));
    EXPECT_EQ(maxvio(loads_of(r, E)), 0.0);
    // each expert's chosen tokens are its top 13 by score; gates are those scores
    std::vector<double> s = values(in.scores), g = values(r.gate);
    std::vector<int64_t> tok = r.token.to_vector<int64_t>(), ex = r.expert.to_vector<int64_t>();
    for (int64_t e = 0; e < E; ++e) {
      double worst_chosen = 2, best_other = -1;
      std::vector<bool> chosen(size_t(T), false);
      for (size_t a = 0; a < tok.size(); ++a)
        if (ex[a] == e) chosen[size_t(tok[a])] = true;
      for (int64_t t = 0; t < T; ++t) {
        double v = s[size_t(t * E + e)];
        if (chosen[size_t(t)]) worst_chosen = std::min(worst_chosen, v);
        else best_other = std::max(best_other, v);
      }
      EXPECT_GE(worst_chosen, best_other);
    }
    for (size_t a = 0; a < tok.size(); ++a) {
      EXPECT_EQ(g[a], s[size_t(tok[a] * E + ex[a])]);
      if (a) {
        EXPECT_TRUE(tok[a - 1] < tok[a] || (tok[a - 1] == tok[a] && ex[a - 1] < ex[a]));  // token-major
      }
    }
  }
}

TEST(BalanceExpertChoice, TiesGoToTheLowerTokenAndCapacityFollowsC) {
  const int64_t T = 12, E = 3;
  MoeConfig cfg = balance_config("expert_choice", E, 1);
  cfg.balance.expert_choice_capacity = 0.5;  // C = ceil(12 * 0.5 / 3) = 2
  auto b = make_balancer(cfg);
  RouterOutput in = router_output(Tensor::zeros({T, E}), E, 1);  // all scores equal
  Philox rng;
  Routing r = b->select(in, rng);
  EXPECT_EQ(r.token.to_vector<int64_t>(), (std::vector<int64_t>{0, 0, 0, 1, 1, 1}));
  EXPECT_EQ(r.expert.to_vector<int64_t>(), (std::vector<int64_t>{0, 1, 2, 0, 1, 2}));
}

TEST(BalanceExpertChoice, GatesGradcheck) {
  auto b = make_balancer(balance_config("expert_choice", 4, 1));
  Tensor x = randn_f64({11, 4}, 63);
  EXPECT_GRADCHECK(
      [&](const std::vector<Tensor>& v) {
        Philox rng;
        return b->select(router_output(v[0], 4, 1), rng).gate;
      },
      {x}, 1e-6, 1e-8, 1e-5);
}
