// The Sinkhorn plan kernel against a double-precision log-domain reference run for the same
// number of iterations, and the plan's marginals (rows 1/T, columns 1/E) for a small xi.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "core/cuda/memory.h"
#include "core/cuda/sinkhorn.h"
#include "tests/cuda/kernel_test_util.h"

using namespace moe;
using namespace moe::cuda;
using namespace moe::test;

namespace {

std::vector<double> reference_plan(const std::vector<float>& x, long T, int E, double xi, int iters) {
  std::vector<double> ld0(T, 0), ld1(E, 0), plan(T * E);
  auto lse = [](const std::vector<double>& v) {
    double m = *std::max_element(v.begin(), v.end()), s = 0;
    for (double a : v) s += std::exp(a - m);
    return m + std::log(s);
  };
  for (int it = 0; it < iters; ++it) {
    for (long t = 0; t < T; ++t) {
      std::vector<double> v(E);
      for (int e = 0; e < E; ++e) v[e] = x[t * E + e] / xi + ld1[e];
      ld0[t] = -std::log(double(T)) - lse(v);
    }
    for (int e = 0; e < E; ++e) {
      std::vector<double> v(T);
      for (long t = 0; t < T; ++t) v[t] = x[t * E + e] / xi + ld0[t];
      ld1[e] = -std::log(double(E)) - lse(v);
    }
  }
  for (long t = 0; t < T; ++t)
    for (int e = 0; e < E; ++e) plan[t * E + e] = std::exp(x[t * E + e] / xi + ld0[t] + ld1[e]);
  return plan;
}

void check_sinkhorn(long T, int E, float xi, int max_iters) {
  auto x = random_normal(T * E, 71);
  for (int e = 0; e < E; ++e) x[e] = 6.0f;  // one token strongly prefers every expert: rows far below the max
  DeviceBuffer<float> dx(x), plan(T * E);
  const int iters = sinkhorn_plan(dx.get(), T, E, xi, max_iters, 1e-4f, plan.get());
  ASSERT_GE(iters, 1);
  ASSERT_LE(iters, max_iters);
  auto got = plan.to_host();
  auto want = reference_plan(x, T, E, xi, iters);
  // Entries are ~1/(T E); fp32 logs over tens of iterations: relative 1e-3, absolute 1e-7.
  EXPECT_TRUE(all_near(got, want, 1e-7, 1e-3));
  for (int e = 0; e < E; ++e) {  // the column update came last: columns sum to 1/E
    double s = 0;
    for (long t = 0; t < T; ++t) s += got[t * E + e];
    EXPECT_NEAR(s, 1.0 / E, 1e-4 / E) << "column " << e;
  }
  double worst_row = 0;
  for (long t = 0; t < T; ++t) {
    double s = 0;
    for (int e = 0; e < E; ++e) s += got[t * E + e];
    ASSERT_TRUE(std::isfinite(s)) << "row " << t;
    worst_row = std::max(worst_row, std::abs(s * T - 1));
  }
  if (iters < max_iters) {
    EXPECT_LT(worst_row, 0.05) << "converged plan: rows near 1/T";
  }
  ::testing::Test::RecordProperty("iterations_" + std::to_string(T), iters);
}

TEST(CudaSinkhorn, PlanMatchesLogDomainReference) {
  check_sinkhorn(19, 11, 0.5f, 100);
  check_sinkhorn(13, 7, 0.05f, 20);  // small xi: max-shifted linear domain would underflow rows
}

}  // namespace
