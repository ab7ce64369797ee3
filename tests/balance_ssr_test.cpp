// Strategy "ssr": plan routing with plan-renormalized gates on plan steps, plain top-k otherwise,
// and the per-step coin drawn from the Philox stream, reproducible from the same offset.
#include <gtest/gtest.h>

#include <cmath>

#include "layers/moe/balance/sinkhorn_plan.h"
#include "tests/balance_test_helpers.h"

using namespace moe;
using namespace moe::test;

namespace {

MoeConfig ssr_config(double p, int64_t E = 8, int64_t k = 2) {
  MoeConfig cfg = balance_config("ssr", E, k);
  cfg.balance.ssr_probability = p;
  cfg.balance.sinkhorn_temperature = 0.5;
  return cfg;
}

}  // namespace

TEST(BalanceSsr, PlanStepRoutesByThePlanWithPlanGates) {
  const int64_t T = 64, E = 8, k = 2;
  auto b = make_balancer(ssr_config(1.0, E, k));
  MoeConfig sc = balance_config("sinkhorn", E, k);
  sc.balance.sinkhorn_temperature = 0.5;
  auto sb = make_balancer(sc);
  Tensor x = favoured_logits(T, E, 41);
  RouterOutput in = router_output(x, E, k);
  Philox rng;
  Routing r = b->select(in, rng);
  EXPECT_EQ(r.expert.to_vector<int64_t>(), sb->select(in, rng).expert.to_vector<int64_t>());
  EXPECT_LT(maxvio(loads_of(r, E)), 0.5);
  SinkhornPlan p = sinkhorn_plan(x, 0.5, 100, 1e-4);
  std::vector<double> g = values(r.gate);
  std::vector<int64_t> ex = r.expert.to_vector<int64_t>();
  for (int64_t t = 0; t < T; ++t) {
    double a = std::exp(p.log_plan[size_t(t * E + ex[size_t(2 * t)])]);
    double c = std::exp(p.log_plan[size_t(t * E + ex[size_t(2 * t + 1)])]);
    EXPECT_NEAR(g[size_t(2 * t)], a / (a + c), 1e-5);
    EXPECT_NEAR(g[size_t(2 * t)] + g[size_t(2 * t + 1)], 1.0, 1e-6);
  }
  // the plan gates still carry a gradient to the logits
  Tensor xl = x.clone();
  xl.set_requires_grad(true);
  RouterOutput in2 = router_output(xl, E, k);
  Routing r2 = b->select(in2, rng);
  sum_all(mul(r2.gate, Tensor::arange(2 * T, DType::f32))).backward();
  double norm = 0;
  for (double v : values(xl.grad())) {
    ASSERT_TRUE(std::isfinite(v));
    norm += v * v;
  }
  EXPECT_GT(norm, 1e-6);
}

TEST(BalanceSsr, ProbabilityZeroIsPlainTopKAndEvalDrawsNothing) {
  auto b = make_balancer(ssr_config(0.0));
  auto none = make_balancer(balance_config("none", 8, 2));
  RouterOutput in = router_output(favoured_logits(32, 8, 42), 8, 2);
  Philox rng(5, 6, 7);
  Routing r = b->select(in, rng), rn = none->select(in, rng);
  EXPECT_EQ(r.expert.to_vector<int64_t>(), rn.expert.to_vector<int64_t>());
  EXPECT_EQ(values(r.gate), values(rn.gate));
  uint64_t off = rng.offset();
  EXPECT_GT(off, 7u);  // a training select consumed its coin
  in.training = false;
  b->select(in, rng);
  EXPECT_EQ(rng.offset(), off);
}

TEST(BalanceSsr, CoinFlipsReproduceFromTheSamePhiloxOffset) {
  auto b = make_balancer(ssr_config(0.5));
  auto none = make_balancer(balance_config("none", 8, 2));
  RouterOutput in = router_output(favoured_logits(32, 8, 43), 8, 2);
  Philox probe;
  const std::vector<int64_t> plain = none->select(in, probe).expert.to_vector<int64_t>();
  auto flips = [&](uint64_t offset, uint64_t* end_offset) {
    Philox rng(1234, stream_id(RngStream::ssr, 0, 3), offset);
    std::vector<int> used_plan;
    for (int step = 0; step < 40; ++step) used_plan.push_back(b->select(in, rng).expert.to_vector<int64_t>() != plain);
    *end_offset = rng.offset();
    return used_plan;
  };
  uint64_t e1, e2, e3;
  std::vector<int> a = flips(100, &e1), c = flips(100, &e2), d = flips(5000, &e3);
  EXPECT_EQ(a, c);
  EXPECT_EQ(e1, e2);
  int n = 0;
  for (int v : a) n += v;
  EXPECT_GT(n, 5);   // both kinds of steps occur at p = 0.5 (40 draws)
  EXPECT_LT(n, 35);
  EXPECT_NE(a, d);   // another offset, another sequence
}
