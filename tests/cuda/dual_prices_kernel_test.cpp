// BIP / quantile dual price kernels against the CPU: the hand-computed case, the CPU balancer's q
// and selections over two warm-started batches (paper order), and the unclipped quantile form.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/cuda/dual_prices.h"
#include "core/cuda/memory.h"
#include "layers/moe/balance/dual_prices.h"
#include "tests/balance_test_helpers.h"
#include "tests/cuda/kernel_test_util.h"

using namespace moe;
using namespace moe::cuda;
using namespace moe::test;

namespace {

// Every token prefers expert 0 by 3 logits over N(0, 1) noise (favoured_logits of the balance
// tests, drawn here from the kernel tests' own generator).
Tensor favoured(long T, int E, unsigned seed) {
  auto x = random_normal(static_cast<size_t>(T * E), seed);
  for (long t = 0; t < T; ++t) x[static_cast<size_t>(t * E)] += 3.0f;
  return Tensor::from_vector<float>(x, {T, E});
}

TEST(CudaDualPrices, HandComputedIteration) {
  // As BalanceBip.DualIterationHandComputed: k = 1, T = 4, E = 2, cap = 2 -> q = [.3, 0].
  DeviceBuffer<float> s(std::vector<float>{.9f, .1f, .8f, .2f, .65f, .35f, .6f, .4f}), q(std::vector<float>{0, 0});
  dual_price_iterations(s.get(), 4, 2, 1, 2, 1, true, q.get());
  auto got = q.to_host();
  EXPECT_NEAR(got[0], 0.3, 1e-7);
  EXPECT_EQ(got[1], 0.0f);
}

// The kernel's selection is exactly the stable top-k of the fp32 s - q_gpu; the CPU balancer's
// selection (double math, its own q) may differ from it only on tokens whose k-th and (k+1)-th
// shifted scores are closer than 1e-5: the price iteration makes such near ties on purpose.
void expect_same_selection(const std::vector<float>& s, const std::vector<float>& q_gpu,
                           const std::vector<double>& q_cpu, const Routing& cpu, const std::vector<int32_t>& gpu,
                           long T, int E, int k) {
  auto cpu_expert = cpu.expert.to_vector<int64_t>();
  ASSERT_EQ(cpu_expert.size(), static_cast<size_t>(T * k));
  long differing = 0;
  for (long t = 0; t < T; ++t) {
    std::vector<float> v(static_cast<size_t>(E));
    std::vector<int> order(static_cast<size_t>(E));
    for (int e = 0; e < E; ++e)
      v[static_cast<size_t>(e)] = s[static_cast<size_t>(t * E + e)] - q_gpu[static_cast<size_t>(e)];
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return v[size_t(a)] > v[size_t(b)]; });
    bool same = true;
    for (int j = 0; j < k; ++j) {
      ASSERT_EQ(gpu[static_cast<size_t>(t * k + j)], order[static_cast<size_t>(j)]) << "token " << t << " rank " << j;
      same = same && cpu_expert[static_cast<size_t>(t * k + j)] == order[static_cast<size_t>(j)];
    }
    if (same) continue;
    ++differing;
    std::vector<double> w(static_cast<size_t>(E));
    for (int e = 0; e < E; ++e) w[size_t(e)] = double(s[static_cast<size_t>(t * E + e)]) - q_cpu[size_t(e)];
    std::sort(w.begin(), w.end(), std::greater<>());
    EXPECT_LT(w[size_t(k - 1)] - w[size_t(k)], 1e-5) << "token " << t << " differs from the CPU without a near tie";
  }
  ::testing::Test::RecordProperty("tokens_differing_on_near_ties", int(differing));
}

TEST(CudaDualPrices, BipPaperOrderMatchesCpuBalancerWarmStarted) {
  const long T = 131;
  const int E = 13, k = 3, iters = 5;
  MoeConfig cfg = balance_config("bip", E, k);
  cfg.balance.bip_order = "paper";
  cfg.balance.bip_iters = iters;
  auto bip = make_balancer(cfg);
  Philox rng;
  DeviceBuffer<float> q(std::vector<float>(static_cast<size_t>(E), 0.0f)), values(static_cast<size_t>(T * k));
  DeviceBuffer<int32_t> indices(static_cast<size_t>(T * k));
  const long cap = balanced_capacity(T, E, k);
  for (unsigned seed : {300u, 301u}) {  // the second batch starts from the first batch's prices
    RouterOutput in = router_output(favoured(T, E, seed), E, k);
    Routing cpu = bip->select(in, rng);
    std::vector<double> q_cpu = bip->state_vector();
    auto s = in.scores.detach().contiguous().to_vector<float>();
    DeviceBuffer<float> ds(s);
    dual_price_iterations(ds.get(), T, E, k, cap, iters, true, q.get());
    auto q_gpu = q.to_host();
    EXPECT_TRUE(all_near(q_gpu, q_cpu, 2e-6, 1e-5)) << "prices, batch " << seed;
    EXPECT_GT(*std::max_element(q_cpu.begin(), q_cpu.end()), 0.01) << "the favoured expert is priced";
    price_shifted_topk(ds.get(), q.get(), T, E, k, values.get(), indices.get());
    expect_same_selection(s, q_gpu, q_cpu, cpu, indices.to_host(), T, E, k);
  }
}

TEST(CudaDualPrices, UnclippedQuantileFormMatchesCpu) {
  // Equality form (no max(0, .)): expert 4 is unpopular, so its price goes negative; k = 4 caps the
  // row order k + 1 at E.
  const long T = 150;
  const int E = 5, iters = 3;
  auto s = random_normal(static_cast<size_t>(T * E), 81);
  for (long t = 0; t < T; ++t) s[static_cast<size_t>(t * E + 4)] -= 3.0f;
  for (int k : {1, 2, 4}) {
    std::vector<float> q0 = {0.3f, -0.2f, 0.0f, 0.5f, 0.0f}, q_cpu = q0;
    const long cap = balanced_capacity(T, E, k);
    dual_price_iterations(Tensor::from_vector<float>(s, {T, E}), k, cap, iters, false, q_cpu);
    DeviceBuffer<float> ds(s), q(q0);
    dual_price_iterations(ds.get(), T, E, k, cap, iters, false, q.get());
    EXPECT_TRUE(all_near(q.to_host(), q_cpu, 2e-6, 1e-5)) << "k = " << k;
    if (k < 4) {
      EXPECT_LT(q_cpu[4], -0.5f) << "k = " << k << ": the unpopular expert's price is negative";
    }
  }
}

// Scores on a 1/64 grid: many exact ties in rows and columns (and zeros of both signs), and every
// difference s - q is exact in fp32, so the kernels must reproduce the CPU's double prices exactly.
std::vector<float> tied_scores(long T, int E, unsigned seed) {
  auto s = random_normal(static_cast<size_t>(T * E), seed);
  for (auto& x : s) x = std::round(x * 8.0f) / 64.0f;
  return s;
}

TEST(CudaDualPrices, LongColumnsWithTies) {
  // T = 3001: 192 threads per expert (6 warps; 4096 histogram bins do not split evenly over them);
  // T > 16 x 1024: 1024 threads, re-reading the tokens beyond the 16 per thread kept in registers.
  // The rank cap + 1 lands inside runs of tied values. The long one clipped: the positive count
  // and the select over the positives re-read the uncached tokens too.
  const int E = 2, k = 1, iters = 1;
  for (long T : {3001L, 16411L}) {
    const auto s = tied_scores(T, E, 91);
    const long cap = balanced_capacity(T, E, k);
    std::vector<float> q_cpu = {0.0625f, -0.125f};
    DeviceBuffer<float> ds(s), q(q_cpu);
    const bool clip = T > 16 * 1024;
    dual_price_iterations(Tensor::from_vector<float>(s, {T, E}), k, cap, iters, clip, q_cpu);
    dual_price_iterations(ds.get(), T, E, k, cap, iters, clip, q.get());
    EXPECT_TRUE(all_near(q.to_host(), q_cpu, 0.0, 0.0)) << "T = " << T;
  }
}

TEST(CudaDualPrices, ColumnRanksFromLargestToSmallest) {
  // The expert pass's radix select at the ranks m = cap + 1 = 2 (near the top), m = T (the
  // smallest: the atomicMin exit after the first pass) and in between (the bucket's largest or
  // smallest after two passes: the atomicMax / atomicMin exits; the third pass otherwise), on
  // continuous values (distinct: the exits after the second pass) and on the 1/64 grid (runs of
  // ties fill the buckets). T = 511 is odd: one warp of 16 cached tokens each, the last short.
  const long T = 511;
  const int E = 3, k = 1;
  for (bool tied : {false, true}) {
    const auto s = tied ? tied_scores(T, E, 93) : random_normal(static_cast<size_t>(T * E), 94);
    // Clipped (BIP): the positive values are counted first; fewer than cap + 1 give 0 at once
    // (cap 510: m = T), else the select runs over them alone (cap 1).
    for (bool clip : {false, true})
      for (long cap : {1L, 200L, 510L}) {
        std::vector<float> q_cpu = {0.0f, 0.25f, -0.125f};
        DeviceBuffer<float> ds(s), q(q_cpu);
        dual_price_iterations(Tensor::from_vector<float>(s, {T, E}), k, cap, 1, clip, q_cpu);
        dual_price_iterations(ds.get(), T, E, k, cap, 1, clip, q.get());
        EXPECT_TRUE(all_near(q.to_host(), q_cpu, tied ? 0.0 : 2e-6, tied ? 0.0 : 1e-5))
            << "cap = " << cap << ", tied = " << tied << ", clip = " << clip;
      }
  }
}

TEST(CudaDualPrices, RowOrdersUpToAllExpertsWithTies) {
  // E = 37: lanes hold one or two of a row's values; k + 1 runs up to E (m rounds of the token
  // pass's peeling, through tied values); columns of 45 tokens, clipped and not; a rerun matches
  // bit for bit.
  const long T = 45;
  const int E = 37;
  const auto s = tied_scores(T, E, 92);
  for (int k : {1, 5, 36}) {
    for (bool clip : {false, true}) {
      const long cap = balanced_capacity(T, E, k);
      std::vector<float> q0(static_cast<size_t>(E), 0.0f);
      q0[3] = 0.125f;
      std::vector<float> q_cpu = q0;
      DeviceBuffer<float> ds(s), q(q0);
      dual_price_iterations(Tensor::from_vector<float>(s, {T, E}), k, cap, 2, clip, q_cpu);
      dual_price_iterations(ds.get(), T, E, k, cap, 2, clip, q.get());
      const auto got = q.to_host();
      EXPECT_TRUE(all_near(got, q_cpu, 0.0, 0.0)) << "k = " << k << ", clip = " << clip;
      if (k != 36 || clip) continue;
      DeviceBuffer<float> again(q0);
      dual_price_iterations(ds.get(), T, E, k, cap, 2, clip, again.get());
      EXPECT_EQ(again.to_host(), got) << "bit-identical reruns";
    }
  }
}

TEST(CudaDualPrices, QuantileBalancerStateMatchesOverBatches) {
  // The quantile strategy in training: route with beta, one unclipped dual round from beta gives
  // the target, beta moves toward it by the rate and is re-centred.
  const long T = 96;
  const int E = 7, k = 2;
  MoeConfig cfg = balance_config("quantile", E, k);
  cfg.balance.quantile_rate = 0.3;
  auto quantile = make_balancer(cfg);
  Philox rng;
  DeviceBuffer<float> beta(std::vector<float>(static_cast<size_t>(E), 0.0f));
  for (unsigned seed : {310u, 311u, 312u}) {
    RouterOutput in = router_output(favoured(T, E, seed), E, k);
    quantile->select(in, rng);
    DeviceBuffer<float> ds(in.scores.detach().contiguous().to_vector<float>());
    DeviceBuffer<float> target(beta.to_host());  // the dual round starts from beta
    dual_price_iterations(ds.get(), T, E, k, balanced_capacity(T, E, k), 1, false, target.get());
    quantile_beta_update(beta.get(), target.get(), E, cfg.balance.quantile_rate);
    auto want = quantile->state_vector();
    auto got = beta.to_host();
    // The targets agree to fp32 rounding (float vs double differences), so beta does too.
    EXPECT_TRUE(all_near(got, want, 1e-6, 1e-5)) << "batch " << seed;
    EXPECT_GT(*std::max_element(got.begin(), got.end()), 0.01f) << "expert 0 is priced up";
  }
}

}  // namespace
