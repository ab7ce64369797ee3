// The routing statistics' sums on the device (cuda::router_stat_sums through the backend's
// router_stat_sums) against the host loop of layers/moe/routing_stats.cpp, both in fp64: within
// 1e-12 of the largest magnitude (only the order of the token sums differs). Odd sizes: 301 tokens
// (three blocks of 128, the last ragged), more logit columns than experts (null experts), score
// rows that sum to zero (no entropy), sigmoid-like scores that do not sum to 1; the first NaN
// score is found by its flat index.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <vector>

#include "core/cuda/ops/cuda_backend.h"
#include "core/rng.h"
#include "layers/moe/routing_stats.h"
#include "tests/cuda/test_seed.h"

namespace moe {
namespace {

constexpr double kRel = 1e-12;

struct Inputs {
  Tensor scores, logits;
};

// scores [T, Cs] in (0, 1) with every 7th row all zeros; logits [T, C] normal * 3.
Inputs make_inputs(int64_t T, int64_t Cs, int64_t C, uint64_t seed) {
  Philox rng(test::test_seed(seed), 0);
  std::vector<float> s(size_t(T * Cs)), l(size_t(T * C));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < Cs; ++j) s[size_t(t * Cs + j)] = t % 7 == 3 ? 0.0f : float(rng.uniform());
  for (float& v : l) v = float(rng.normal() * 3.0);
  return {Tensor::from_vector(s, {T, Cs}), Tensor::from_vector(l, {T, C})};
}

void expect_sums_near(const RouterStatSums& got, const RouterStatSums& want) {
  EXPECT_EQ(got.tokens, want.tokens);
  EXPECT_EQ(got.first_nan, want.first_nan);
  ASSERT_EQ(got.logit_sum.size(), want.logit_sum.size());
  double top = std::abs(want.entropy_sum);
  for (double v : want.logit_sum) top = std::max(top, std::abs(v));
  for (size_t j = 0; j < want.logit_sum.size(); ++j)
    EXPECT_NEAR(got.logit_sum[j], want.logit_sum[j], kRel * top) << "logit sum of expert " << j;
  EXPECT_NEAR(got.entropy_sum, want.entropy_sum, kRel * top);
}

TEST(RouterStatSumsDevice, MatchesTheHostSums) {
  cuda::install_backend("RouterStatSumsDevice");
  for (auto [T, Cs, C, E] : {std::array<int64_t, 4>{301, 5, 7, 5}, {37, 13, 13, 13}, {129, 6, 9, 4}}) {
    SCOPED_TRACE(testing::Message() << "T " << T << ", score cols " << Cs << ", logit cols " << C << ", E " << E);
    Inputs in = make_inputs(T, Cs, C, uint64_t(T * 100 + C));
    const RouterStatSums want = router_stat_sums(in.scores, in.logits, E);
    EXPECT_GT(want.entropy_sum, 0.0);
    const RouterStatSums got = router_stat_sums(in.scores.to(Device::cuda), in.logits.to(Device::cuda), E);
    expect_sums_near(got, want);
  }
}

TEST(RouterStatSumsDevice, FindsTheFirstNanScore) {
  cuda::install_backend("RouterStatSumsDevice");
  const int64_t T = 301, E = 5;
  Inputs in = make_inputs(T, E, E, 7);
  std::vector<float> s = in.scores.to_vector<float>();
  s[size_t(250 * E + 1)] = std::numeric_limits<float>::quiet_NaN();  // third block
  s[size_t(140 * E + 4)] = std::numeric_limits<float>::quiet_NaN();  // second block: the first
  Tensor scores = Tensor::from_vector(s, {T, E});
  const RouterStatSums want = router_stat_sums(scores, in.logits, E);
  EXPECT_EQ(want.first_nan, 140 * E + 4);
  const RouterStatSums got = router_stat_sums(scores.to(Device::cuda), in.logits.to(Device::cuda), E);
  EXPECT_EQ(got.first_nan, want.first_nan);
}

TEST(RouterStatSumsDevice, RefusesMixedDevicesAndTooFewLogitColumns) {
  cuda::install_backend("RouterStatSumsDevice");
  Inputs in = make_inputs(9, 4, 4, 3);
  EXPECT_THROW(router_stat_sums(in.scores.to(Device::cuda), in.logits, 4), Error);
  EXPECT_THROW(router_stat_sums(in.scores.to(Device::cuda), in.logits.to(Device::cuda), 5), Error);
}

}  // namespace
}  // namespace moe
