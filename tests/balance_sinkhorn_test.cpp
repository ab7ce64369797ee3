// Strategy "sinkhorn" (S-BASE) and its plan: both marginals are met, logits of +/-80 never give
// NaN, the plan's routing is balanced where plain top-k is not, eval is plain top-k.
#include <gtest/gtest.h>

#include <cmath>

#include "layers/moe/balance/sinkhorn_plan.h"
#include "tests/balance_test_helpers.h"

using namespace moe;
using namespace moe::test;

namespace {

// Max over rows of |T * row sum - 1| and over columns of |E * column sum - 1|.
std::pair<double, double> marginal_errors(const SinkhornPlan& p) {
  const int64_t T = p.tokens, E = p.experts;
  std::vector<double> col(size_t(E), 0.0);
  double row_err = 0, col_err = 0;
  for (int64_t i = 0; i < T; ++i) {
    double r = 0;
    for (int64_t j = 0; j < E; ++j) {
      double v = std::exp(p.log_plan[size_t(i * E + j)]);
      r += v;
      col[size_t(j)] += v;
    }
    row_err = std::max(row_err, std::abs(double(T) * r - 1));
  }
  for (double c : col) col_err = std::max(col_err, std::abs(double(E) * c - 1));
  return {row_err, col_err};
}

}  // namespace

TEST(BalanceSinkhorn, PlanMeetsBothMarginalsInBothDomains) {
  Tensor x = randn_f32({37, 5}, 21, 2.0);
  for (bool force_log : {false, true}) {
    SinkhornPlan p = sinkhorn_plan(x, 1.0, 200, 1e-7, force_log);
    EXPECT_EQ(p.log_domain, force_log);
    EXPECT_LT(p.iterations, 200);
    auto [row_err, col_err] = marginal_errors(p);
    EXPECT_LT(row_err, 1e-5);
    EXPECT_LT(col_err, 1e-12);
  }
  SinkhornPlan a = sinkhorn_plan(x, 1.0, 200, 1e-7, false), b = sinkhorn_plan(x, 1.0, 200, 1e-7, true);
  for (size_t i = 0; i < a.log_plan.size(); ++i) EXPECT_NEAR(a.log_plan[i], b.log_plan[i], 1e-9);
}

TEST(BalanceSinkhorn, IterationCapAndToleranceStopTheLoop) {
  Tensor x = randn_f32({40, 6}, 22, 3.0);
  EXPECT_EQ(sinkhorn_plan(x, 1.0, 3, 0.0).iterations, 3);
  SinkhornPlan p = sinkhorn_plan(x, 1.0, 1000, 1e-4);
  EXPECT_LT(p.iterations, 1000);
  EXPECT_LT(p.last_change, 1e-4);
}

TEST(BalanceSinkhorn, ExtremeLogitsNeverGiveNaN) {
  const int64_t T = 33, E = 7;
  std::vector<double> pm(size_t(T * E)), col(size_t(T * E));
  std::vector<double> r = randn_f64({T, E}, 23, 1.0, false).to_double_vector();
  for (size_t i = 0; i < pm.size(); ++i) pm[i] = r[i] > 0 ? 80.0 : -80.0;
  for (int64_t t = 0; t < T; ++t)  // a collapsed router: expert 0 at +80, the rest at -80
    for (int64_t e = 0; e < E; ++e) col[size_t(t * E + e)] = e == 0 ? 80.0 : -80.0;
  for (const auto& v : {pm, col})
    for (double xi : {1.0, 0.05}) {
      Tensor x = Tensor::from_vector<double>(v, {T, E}).to(DType::f32);
      SinkhornPlan p = sinkhorn_plan(x, xi, 100, 1e-4);
      for (double lp : p.log_plan) ASSERT_TRUE(std::isfinite(lp));
      EXPECT_LT(marginal_errors(p).second, 1e-9);  // the plan ends on a column update
      MoeConfig cfg = balance_config("sinkhorn", E, 2);
      cfg.balance.sinkhorn_temperature = xi;
      auto b = make_balancer(cfg);
      Philox rng;
      Routing rt = b->select(router_output(x, E, 2), rng);
      for (double g : values(rt.gate)) ASSERT_TRUE(std::isfinite(g));
      for (double s : values(rt.score)) ASSERT_TRUE(std::isfinite(s));
    }
  // the all-same-column case underflows exp(-160 / 0.05): the log domain must have taken over
  EXPECT_TRUE(sinkhorn_plan(Tensor::from_vector<double>(col, {T, E}), 0.05, 100, 1e-4).log_domain);
}

TEST(BalanceSinkhorn, TrainingRoutingIsBalancedWhereTopKIsNot) {
  const int64_t T = 128, E = 8, k = 2;
  auto b = make_balancer(balance_config("sinkhorn", E, k));
  auto none = make_balancer(balance_config("none", E, k));
  Philox rng;
  for (Tensor x : {favoured_logits(T, E, 31), collapsed_logits(T, E, 32)}) {
    RouterOutput in = router_output(x, E, k);
    EXPECT_GT(maxvio(loads_of(none->select(in, rng), E)), 1.0);
    EXPECT_LT(maxvio(loads_of(b->select(in, rng), E)), 0.5);
  }
}

TEST(BalanceSinkhorn, EvalIsPlainTopKAndGatesAreTheActivation) {
  const int64_t T = 20, E = 6;
  Tensor x = favoured_logits(T, E, 33);
  Philox rng;
  for (int64_t k : {1, 2}) {
    auto b = make_balancer(balance_config("sinkhorn", E, k));
    auto none = make_balancer(balance_config("none", E, k));
    RouterOutput ev = router_output(x, E, k, /*training=*/false);
    EXPECT_EQ(b->select(ev, rng).expert.to_vector<int64_t>(), none->select(ev, rng).expert.to_vector<int64_t>());
    Routing r = b->select(router_output(x, E, k), rng);
    std::vector<double> xs = values(x), sm = values(softmax(x, -1)), g = values(r.gate);
    std::vector<int64_t> tok = r.token.to_vector<int64_t>(), ex = r.expert.to_vector<int64_t>();
    for (size_t a = 0; a < g.size(); ++a) {
      size_t f = size_t(tok[a] * E + ex[a]);
      double want = k == 1 ? 1.0 / (1.0 + std::exp(-xs[f])) : sm[f];  // sigmoid for k = 1, else softmax
      EXPECT_NEAR(g[a], want, 1e-6);
    }
  }
}

TEST(BalanceSinkhorn, GatesGradcheckWithRoutingFixed) {
  auto b = make_balancer(balance_config("sinkhorn", 5, 2));
  Tensor x = randn_f64({9, 5}, 34);
  EXPECT_GRADCHECK(
      [&](const std::vector<Tensor>& v) {
        Philox rng;
        return b->select(router_output(v[0], 5, 2), rng).gate;
      },
      {x}, 1e-6, 1e-8, 1e-5);
}
