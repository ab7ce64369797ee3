// expert_choice and top_p routing on the device under the emulation.
// Ops (selection_ops.cpp): expert_choice_select, top_p_select and routing_entropy against a CPU
// computation here (selections exactly, with planted ties; the entropy and its grad in fp32, 1e-5
// of the largest entry, against the host ops in double).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/cuda/ops/cuda_backend.h"
#include "core/ops.h"
#include "core/rng.h"
#include "tests/cuda/device_test_util.h"

namespace moe {
namespace {

using test::random_host;

class ChoiceTopPDeviceOps : public ::testing::Test {
 protected:
  void SetUp() override { cuda::install_backend("ChoiceTopPDeviceOps"); }
};

// Scores [T, E] with values on a grid of 1/16, so that many of them tie exactly.
std::vector<float> tied_values(int64_t T, int64_t E, uint64_t seed) {
  std::vector<float> v = random_host({T, E}, seed).to_vector<float>();
  for (float& x : v) x = std::round(x * 16.0f) / 16.0f;
  return v;
}

// (value, index) ranks before another: higher value, then lower index.
template <class V>
std::vector<int64_t> ranked_order(int64_t n, V value) {
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return value(a) > value(b); });
  return order;
}

TEST_F(ChoiceTopPDeviceOps, ExpertChoiceSelectMatchesCpu) {
  const int64_t T = 37, E = 6;
  const std::vector<float> s = tied_values(T, E, 51);
  const Tensor sd = Tensor::from_vector(s, {T, E}).to(Device::cuda);
  CudaBackend& be = cuda_backend("test");
  for (int64_t C : {int64_t(1), int64_t(8), T}) {
    std::vector<uint8_t> want(static_cast<size_t>(T * E), 0);
    for (int64_t e = 0; e < E; ++e) {
      std::vector<int64_t> order = ranked_order(T, [&](int64_t t) { return s[size_t(t * E + e)]; });
      for (int64_t r = 0; r < C; ++r) want[size_t(order[size_t(r)] * E + e)] = 1;
    }
    EXPECT_EQ(be.expert_choice_select(sd, C), want) << "capacity " << C;
  }
  EXPECT_THROW(be.expert_choice_select(sd, 0), Error);
  EXPECT_THROW(be.expert_choice_select(sd, T + 1), Error);
  EXPECT_THROW(be.expert_choice_select(Tensor::from_vector(s, {T, E}), 2), Error);  // on the host
}

TEST_F(ChoiceTopPDeviceOps, TopPSelectMatchesCpu) {
  const int64_t T = 29, E = 7;
  // Softmax of tied logits: rows with exactly tied scores, as the router makes them.
  const Tensor s = softmax(Tensor::from_vector(tied_values(T, E, 52), {T, E}), 1);
  const std::vector<float> sv = s.to_vector<float>();
  CudaBackend& be = cuda_backend("test");
  for (double p : {0.3, 0.8, 1.5}) {  // 1.5: every expert of every token
    std::vector<int32_t> want_ranked(static_cast<size_t>(T * E), -1), want_counts(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) {
      std::vector<int64_t> order = ranked_order(E, [&](int64_t e) { return sv[size_t(t * E + e)]; });
      double cum = 0;
      int32_t taken = 0;
      while (taken < E && (taken == 0 || cum < p)) {
        const int64_t e = order[size_t(taken)];
        want_ranked[size_t(t * E + taken++)] = int32_t(e);
        cum += double(sv[size_t(t * E + e)]);
      }
      want_counts[size_t(t)] = taken;
    }
    auto [ranked, counts] = be.top_p_select(s.to(Device::cuda), p);
    ASSERT_EQ(ranked.device(), Device::cuda);
    EXPECT_EQ(ranked.shape(), (Shape{T, E}));
    EXPECT_EQ(ranked.to_vector<int32_t>(), want_ranked) << "p = " << p;
    EXPECT_EQ(counts.to_vector<int32_t>(), want_counts) << "p = " << p;
  }
}

TEST_F(ChoiceTopPDeviceOps, RoutingEntropyMatchesCpuWithAutograd) {
  const int64_t T = 23, E = 9;
  // Sharp rows (logits times 4): tiny scores too, where d(s log s)/ds = log s + 1 is large.
  Tensor s = softmax(random_host({T, E}, 53, 4.0), 1);
  Tensor sh = s.detach().to(DType::f64), sd = s.detach().to(Device::cuda).detach();
  sh.set_requires_grad(true);
  sd.set_requires_grad(true);
  Tensor want = neg(mean_all(sum(mul(sh, log(add_scalar(sh, 1e-30))), {1})));
  want.backward(Tensor::scalar(0.7, DType::f64));
  Tensor got = cuda_backend("test").routing_entropy(sd);
  ASSERT_EQ(got.device(), Device::cuda);
  EXPECT_EQ(got.dim(), 0);
  got.backward(Tensor::scalar(0.7, DType::f32).to(Device::cuda));
  EXPECT_NEAR(got.item_double(), want.item_double(), 1e-5 * want.item_double());
  const std::vector<double> g = sd.grad().to_double_vector(), w = sh.grad().to_double_vector();
  double top = 0;
  for (double v : w) top = std::max(top, std::abs(v));
  for (size_t i = 0; i < w.size(); ++i) EXPECT_NEAR(g[i], w[i], 1e-5 * top) << "entry " << i;
}

}  // namespace
}  // namespace moe
