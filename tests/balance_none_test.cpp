// Strategy "none": exact top-k with the lower-index tie-break, renormalized gates that carry
// the router's gradient, and the imbalance it leaves on hard score matrices.
#include <gtest/gtest.h>

#include "tests/balance_test_helpers.h"

using namespace moe;
using namespace moe::test;

TEST(BalanceNone, TopKTieBreakAndRenormalizedGates) {
  auto b = make_balancer(balance_config("none", 4, 2));
  RouterOutput in;
  in.scores = Tensor::from_vector<float>({0.1f, 0.4f, 0.4f, 0.1f, 0.7f, 0.1f, 0.1f, 0.1f}, {2, 4});
  in.logits = in.scores;
  in.num_experts = 4;
  in.top_k = 2;
  in.seq_len = 2;
  in.training = true;
  Philox rng;
  Routing r = b->select(in, rng);
  EXPECT_EQ(r.token.to_vector<int64_t>(), (std::vector<int64_t>{0, 0, 1, 1}));
  EXPECT_EQ(r.expert.to_vector<int64_t>(), (std::vector<int64_t>{1, 2, 0, 1}));
  std::vector<float> g = r.gate.to_vector<float>();
  EXPECT_FLOAT_EQ(g[0], 0.5f);
  EXPECT_FLOAT_EQ(g[1], 0.5f);
  EXPECT_NEAR(g[2], 0.7f / 0.8f, 1e-6);
  EXPECT_NEAR(g[3], 0.1f / 0.8f, 1e-6);
  EXPECT_EQ(r.score.to_vector<float>(), (std::vector<float>{0.4f, 0.4f, 0.7f, 0.1f}));
}

TEST(BalanceNone, TopOneGateIsTheRawScoreAndGateScaleApplies) {
  MoeConfig cfg = balance_config("none", 5, 1);
  cfg.gate_scale = 2.5;
  auto b = make_balancer(cfg);
  Tensor x = randn_f32({9, 5}, 3);
  RouterOutput in = router_output(x, 5, 1);
  Philox rng;
  Routing r = b->select(in, rng);
  std::vector<double> s = values(in.scores), g = values(r.gate);
  std::vector<int64_t> e = r.expert.to_vector<int64_t>();
  for (int64_t t = 0; t < 9; ++t) {
    double best = *std::max_element(s.begin() + t * 5, s.begin() + t * 5 + 5);
    EXPECT_EQ(s[size_t(t * 5 + e[size_t(t)])], best);
    EXPECT_NEAR(g[size_t(t)], 2.5 * best, 1e-6);
  }
}

TEST(BalanceNone, HardMatricesOverloadOneExpert) {
  auto b = make_balancer(balance_config("none", 8, 2));
  Philox rng;
  double v1 = maxvio(loads_of(b->select(router_output(favoured_logits(64, 8, 5), 8, 2), rng), 8));
  double v2 = maxvio(loads_of(b->select(router_output(collapsed_logits(64, 8, 6), 8, 2), rng), 8));
  EXPECT_GT(v1, 1.0);
  EXPECT_DOUBLE_EQ(v2, 3.0);  // experts 0 and 1 take all 2T assignments: T / (2T/8) - 1
}

TEST(BalanceNone, GatesGradcheckThroughSoftmaxAndSigmoid) {
  for (bool sig : {false, true}) {
    MoeConfig cfg = balance_config("none", 5, 3);
    cfg.score_function = sig ? "sigmoid" : "softmax";
    auto b = make_balancer(cfg);
    Philox rng;
    Tensor x = randn_f64({7, 5}, 41);
    EXPECT_GRADCHECK(
        [&](const std::vector<Tensor>& v) {
          RouterOutput in = router_output(v[0], 5, 3, true, 0, sig);
          return b->select(in, rng).gate;
        },
        {x}, 1e-6, 1e-8, 1e-5);
  }
}
