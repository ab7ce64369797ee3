// Strategy "null_experts" (AdaMoE): null choices vanish from the routing, real gates renormalize,
// and the Switch loss runs over all E + n_null experts (hand-computed).
#include <gtest/gtest.h>

#include "tests/balance_test_helpers.h"

using namespace moe;
using namespace moe::test;

namespace {

MoeConfig null_config() {
  MoeConfig cfg = balance_config("null_experts", 4, 2);
  cfg.balance.num_null_experts = 2;
  return cfg;
}

// 4 real experts (0..3) and 2 nulls (4, 5). Token 0 picks 0, 1; token 1 picks nulls 4, 5;
// token 2 picks null 4 and real 2.
RouterOutput hand_input() {
  RouterOutput in;
  in.scores = Tensor::from_vector<double>(
      {.4, .3, .1, .1, .05, .05, .1, .05, .05, .1, .5, .2, .05, .05, .3, .05, .4, .15}, {3, 6});
  in.logits = in.scores;
  in.num_experts = 4;
  in.top_k = 2;
  in.seq_len = 3;
  in.training = true;
  return in;
}

}  // namespace

TEST(BalanceNullExperts, NullChoicesVanishAndRealGatesRenormalize) {
  auto b = make_balancer(null_config());
  EXPECT_EQ(b->router_outputs(4), 6);
  Philox rng;
  Routing r = b->select(hand_input(), rng);
  EXPECT_EQ(r.token.to_vector<int64_t>(), (std::vector<int64_t>{0, 0, 2}));
  EXPECT_EQ(r.expert.to_vector<int64_t>(), (std::vector<int64_t>{0, 1, 2}));
  std::vector<double> g = values(r.gate);
  EXPECT_NEAR(g[0], .4 / .7, 1e-15);
  EXPECT_NEAR(g[1], .3 / .7, 1e-15);
  EXPECT_NEAR(g[2], 1.0, 1e-15);
}

TEST(BalanceNullExperts, AuxLossOverAllExpertsHandComputed) {
  // loads over 6 outputs (nulls included) [1, 1, 1, 0, 2, 1] / 6; P = column means:
  // 6 * sum f P = 6 * (.55 + .4 + .45 + 0 + 2 * .95 + .4) / (6 * 3) = 3.7 / 3
  auto b = make_balancer(null_config());
  Philox rng;
  RouterOutput in = hand_input();
  Routing r = b->select(in, rng);
  std::vector<ExtraLoss> l = b->extra_losses(in, r);
  ASSERT_EQ(l.size(), 1u);
  EXPECT_NEAR(l[0].unscaled, 3.7 / 3.0, 1e-12);
  EXPECT_NEAR(l[0].scaled.item_double(), 1e-4 * 3.7 / 3.0, 1e-15);
}

TEST(BalanceNullExperts, RandomRoutingHasOnlyRealExpertsAndGradchecks) {
  auto b = make_balancer(null_config());
  Philox rng;
  Tensor x = randn_f64({13, 6}, 71);
  Routing r = b->select(router_output(x, 4, 2), rng);
  std::vector<int64_t> ex = r.expert.to_vector<int64_t>(), tok = r.token.to_vector<int64_t>();
  EXPECT_LT(ex.size(), 26u);  // some choices went to nulls
  std::vector<double> per_token(13, 0.0), g = values(r.gate);
  for (size_t a = 0; a < ex.size(); ++a) {
    EXPECT_LT(ex[a], 4);
    per_token[size_t(tok[a])] += g[a];
  }
  for (size_t a = 0; a < ex.size(); ++a) EXPECT_NEAR(per_token[size_t(tok[a])], 1.0, 1e-12);
  EXPECT_GRADCHECK(
      [&](const std::vector<Tensor>& v) {
        RouterOutput in = router_output(v[0], 4, 2);
        Routing rr = b->select(in, rng);
        Tensor w = Tensor::arange(rr.gate.numel(), DType::f64);
        return add(sum_all(mul(rr.gate, w)), mul_scalar(b->extra_losses(in, rr)[0].scaled, 100.0));
      },
      {x}, 1e-6, 1e-8, 1e-5);
}
