// Strategy "top_p": each token keeps the smallest score-sorted prefix reaching p, with raw gates;
// the aux and entropy terms equal hand-computed values and pass an f64 gradient check.
#include <gtest/gtest.h>

#include <cmath>

#include "tests/balance_test_helpers.h"

using namespace moe;
using namespace moe::test;

TEST(BalanceTopP, HandPrefixes) {
  MoeConfig cfg = balance_config("top_p", 4, 2);
  cfg.balance.top_p_threshold = 0.5;
  auto b = make_balancer(cfg);
  RouterOutput in;
  in.scores = Tensor::from_vector<double>({.1, .6, .2, .1, .3, .15, .25, .3, .25, .25, .25, .25}, {3, 4});
  in.logits = in.scores;
  in.num_experts = 4;
  in.top_k = 2;
  in.seq_len = 3;
  in.training = true;
  Philox rng;
  Routing r = b->select(in, rng);
  // token 0: .6 >= .5 -> {1}; token 1: .3 (expert 0, tie to lower) + .3 -> {0, 3};
  // token 2: four ties of .25 -> {0, 1} (reaches .5 exactly)
  EXPECT_EQ(r.token.to_vector<int64_t>(), (std::vector<int64_t>{0, 1, 1, 2, 2}));
  EXPECT_EQ(r.expert.to_vector<int64_t>(), (std::vector<int64_t>{1, 0, 3, 0, 1}));
  EXPECT_EQ(values(r.gate), (std::vector<double>{.6, .3, .3, .25, .25}));
  // aux: loads [2,2,0,1] / 5, P = [.65,1,.7,.65]/3 -> 4 * (1.3 + 2 + .65) / 15
  // entropy: mean over tokens of -sum s log s
  std::vector<ExtraLoss> l = b->extra_losses(in, r);
  ASSERT_EQ(l.size(), 2u);
  EXPECT_EQ(l[0].name, "aux");
  EXPECT_NEAR(l[0].unscaled, 4 * 3.95 / 15, 1e-12);
  EXPECT_NEAR(l[0].scaled.item_double(), 1e-2 * 4 * 3.95 / 15, 1e-14);
  auto h = [](std::vector<double> p) {
    double s = 0;
    for (double v : p) s -= v * std::log(v);
    return s;
  };
  double ent = (h({.1, .6, .2, .1}) + h({.3, .15, .25, .3}) + h({.25, .25, .25, .25})) / 3;
  EXPECT_EQ(l[1].name, "entropy");
  EXPECT_NEAR(l[1].unscaled, ent, 1e-12);
  EXPECT_NEAR(l[1].scaled.item_double(), 1e-4 * ent, 1e-15);
}

TEST(BalanceTopP, SmallestPrefixPropertyOnRandomScores) {
  const int64_t T = 40, E = 8;
  auto b = make_balancer(balance_config("top_p", E, 2));  // p = 0.4
  Philox rng;
  RouterOutput in = router_output(randn_f32({T, E}, 81, 1.5), E, 2);
  Routing r = b->select(in, rng);
  std::vector<double> s = values(in.scores), g = values(r.gate);
  std::vector<int64_t> tok = r.token.to_vector<int64_t>(), ex = r.expert.to_vector<int64_t>();
  size_t a = 0;
  for (int64_t t = 0; t < T; ++t) {
    double cum = 0, last = 0, min_kept = 2;
    std::vector<bool> kept(size_t(E), false);
    for (; a < tok.size() && tok[a] == t; ++a) {
      last = s[size_t(t * E + ex[a])];
      EXPECT_EQ(g[a], last);  // raw score as the gate
      EXPECT_LE(last, min_kept);  // sorted descending
      min_kept = std::min(min_kept, last);
      kept[size_t(ex[a])] = true;
      cum += last;
    }
    EXPECT_GE(cum, 0.4 - 1e-6);
    EXPECT_LT(cum - last, 0.4);  // dropping the last kept expert falls short: the prefix is minimal
    for (int64_t e = 0; e < E; ++e)
      if (!kept[size_t(e)]) {
        EXPECT_LE(s[size_t(t * E + e)], min_kept);  // a prefix of the sorted scores
      }
  }
  EXPECT_EQ(a, tok.size());
}

TEST(BalanceTopP, LossesGradcheck) {
  MoeConfig cfg = balance_config("top_p", 5, 2);
  cfg.balance.aux_alpha = 0.5;
  cfg.balance.top_p_entropy_beta = 0.7;
  auto b = make_balancer(cfg);
  Tensor x = randn_f64({9, 5}, 82);
  EXPECT_GRADCHECK(
      [&](const std::vector<Tensor>& v) {
        RouterOutput in = router_output(v[0], 5, 2);
        Philox rng;
        Routing r = b->select(in, rng);
        std::vector<ExtraLoss> l = b->extra_losses(in, r);
        return add(add(l[0].scaled, l[1].scaled), sum_all(r.gate));
      },
      {x}, 1e-6, 1e-8, 1e-5);
}
