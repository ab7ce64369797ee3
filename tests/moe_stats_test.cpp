// Routing statistics against hand-computed values, and the congestion-temperature proxy on
// a constructed case where the least-squares fit is exact, plus its degenerate cases.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "layers/moe/routing_stats.h"

using namespace moe;

TEST(MoeStats, LoadStatisticsByHand) {
  RoutingStats s;
  s.load = {4, 2, 0, 2};
  fill_load_stats(s);
  EXPECT_EQ(s.assignments, 8);
  EXPECT_DOUBLE_EQ(s.max_vio, 1.0);                 // 4 / 2 - 1
  EXPECT_DOUBLE_EQ(s.load_cv, std::sqrt(2.0) / 2);  // std sqrt((4 + 0 + 4 + 0) / 4) over mean 2
  EXPECT_NEAR(s.load_entropy, 1.5 * std::log(2.0), 1e-15);
  EXPECT_EQ(s.dead_experts, 1);
  RoutingStats z;
  z.load = {0, 0};
  fill_load_stats(z);
  EXPECT_EQ(z.max_vio, 0.0);
  EXPECT_EQ(z.load_cv, 0.0);
  EXPECT_EQ(z.dead_experts, 2);
}

TEST(MoeStats, ExpertLoadsCountIdsOfEitherWidthAndRefuseOutOfRange) {
  const std::vector<double> want{2, 0, 3, 1};
  EXPECT_EQ(expert_loads(Tensor::from_vector<int32_t>({2, 0, 2, 3, 0, 2}, {6}), 4, "test"), want);
  EXPECT_EQ(expert_loads(Tensor::from_vector<int64_t>({2, 0, 2, 3, 0, 2}, {6}), 4, "test"), want);
  // A strided view is read through a contiguous copy.
  Tensor wide = Tensor::from_vector<int64_t>({2, 9, 0, 9, 2, 9, 3, 9, 0, 9, 2, 9}, {6, 2});
  EXPECT_EQ(expert_loads(wide.select(1, 0), 4, "test"), want);
  try {
    expert_loads(Tensor::from_vector<int32_t>({1, 4}, {2}), 4, "MoeLayer.forward", "my_strategy");
    FAIL() << "an id outside [0, E) must be refused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("strategy 'my_strategy' chose expert 4 outside [0, 4)"), std::string::npos)
        << e.what();
  }
}

TEST(MoeStats, RouterEntropyMeanLogitAndExactTemperatureFit) {
  // Logits [T = 2, E = 4] with mean logits V = {0, 2, 4, 1}; loads share_j proportional to
  // exp(V_j / 2) for j < 3 and expert 3 dead: the fit is exact with T_eff = 2.
  Tensor logits = Tensor::from_vector<double>({-1, 2, 3, 0, 1, 2, 5, 2}, {2, 4});
  Tensor scores = Tensor::from_vector<double>({0.5, 0.5, 0, 0, 0.25, 0.25, 0.25, 0.25}, {2, 4});
  std::vector<double> load{100.0, 100.0 * std::exp(1.0), 100.0 * std::exp(2.0), 0.0};
  RoutingStats s = compute_routing_stats(load, 3, scores, logits, {0.5, -0.5, 0, 0});
  EXPECT_EQ(s.mean_logit, (std::vector<double>{0, 2, 4, 1}));
  EXPECT_NEAR(s.router_entropy, (std::log(2.0) + std::log(4.0)) / 2, 1e-15);
  EXPECT_EQ(s.fit_points, 3);
  EXPECT_TRUE(s.temperature_valid);
  EXPECT_NEAR(s.t_eff, 2.0, 1e-12);
  EXPECT_NEAR(s.gamma_proxy, 1.0, 1e-12);
  EXPECT_NEAR(s.fit_r2, 1.0, 1e-12);
  EXPECT_EQ(s.dropped, 3);
  EXPECT_EQ(s.dead_experts, 1);
  EXPECT_EQ(s.tokens, 2);
  EXPECT_EQ(s.balancer_state, (std::vector<double>{0.5, -0.5, 0, 0}));
  // Loads falling with the logit (strong balancing): a valid negative T_eff.
  RoutingStats n;
  n.load = {100.0 * std::exp(2.0), 100.0 * std::exp(1.0), 100.0};
  n.mean_logit = {0, 1, 2};
  fill_temperature_proxy(n);
  EXPECT_TRUE(n.temperature_valid);
  EXPECT_NEAR(n.t_eff, -1.0, 1e-12);
}

TEST(MoeStats, DegenerateTemperatureFitsAreFiniteAndInvalid) {
  auto check_invalid = [](std::vector<double> load, std::vector<double> v) {
    RoutingStats s;
    s.load = std::move(load);
    s.mean_logit = std::move(v);
    fill_temperature_proxy(s);
    EXPECT_FALSE(s.temperature_valid);
    EXPECT_EQ(s.t_eff, 0.0);
    EXPECT_EQ(s.gamma_proxy, 0.0);
    EXPECT_EQ(s.fit_slope, 0.0);
    EXPECT_TRUE(std::isfinite(s.fit_r2));
  };
  check_invalid({5, 3, 1}, {0.7, 0.7, 0.7});  // all V equal: no slope to fit
  check_invalid({0, 9, 0}, {1, 2, 3});        // one loaded expert (collapsed router)
  check_invalid({0, 0, 0}, {1, 2, 3});        // no load at all
  check_invalid({4, 4, 4}, {1, 2, 3});        // slope 0: T_eff infinite
}

TEST(MoeStats, AccumulatorMergesMicroBatchesAndPacksForAllReduce) {
  // Two micro-batches of 1 and 2 tokens over E = 2 experts (router with 3 outputs).
  Tensor l1 = Tensor::from_vector<double>({1, 3, 9}, {1, 3});
  Tensor s1 = Tensor::from_vector<double>({0.5, 0.5, 0}, {1, 3});
  Tensor l2 = Tensor::from_vector<double>({2, 0, 9, 0, 0, 9}, {2, 3});
  Tensor s2 = Tensor::from_vector<double>({1, 0, 0, 0.25, 0.25, 0.5}, {2, 3});
  RoutingAccumulator a;
  a.add({1, 1}, 0, s1, l1);
  a.add({3, 1}, 2, s2, l2);
  RoutingStats s = a.finish({});
  EXPECT_EQ(s.load, (std::vector<double>{4, 2}));
  EXPECT_EQ(s.dropped, 2);
  EXPECT_EQ(s.tokens, 3);
  EXPECT_EQ(s.mean_logit, (std::vector<double>{1, 1}));  // (1 + 2 + 0) / 3, (3 + 0 + 0) / 3
  double h = (std::log(2.0) + 0 + (0.5 * std::log(4.0) + 0.5 * std::log(2.0))) / 3;
  EXPECT_NEAR(s.router_entropy, h, 1e-15);
  EXPECT_NEAR(s.max_vio, 4.0 / 3.0 - 1, 1e-15);
  // Element-wise sums of packed accumulators (an all-reduce) equal adding everything to one.
  RoutingAccumulator b1, b2;
  b1.add({1, 1}, 0, s1, l1);
  b2.add({3, 1}, 2, s2, l2);
  std::vector<double> p1 = b1.pack(), p2 = b2.pack();
  ASSERT_EQ(p1.size(), 7u);
  for (size_t i = 0; i < p1.size(); ++i) p1[i] += p2[i];
  RoutingStats m = RoutingAccumulator::unpack(p1, 2).finish({});
  EXPECT_EQ(m.load, s.load);
  EXPECT_EQ(m.mean_logit, s.mean_logit);
  EXPECT_DOUBLE_EQ(m.router_entropy, s.router_entropy);
  EXPECT_THROW(RoutingAccumulator::unpack(p1, 3), Error);
}
