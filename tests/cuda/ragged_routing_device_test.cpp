// build_routing with a gate source on the cuda device (the ragged selections of device-routed
// strategies: expert choice, top-p, null experts) under the emulation, against build_routing on
// the host: the same ragged, token-major selection (0 to C choices per token, some tokens none),
// with and without renormalization and a gate scale. Gates agree to fp32 1e-6 of the largest
// entry (one fp32 division per gate on both sides), the grad of the source to 1e-6 of the largest
// term it is a difference of (largest_grad_term); token, expert and score are the host's exactly.
// Also Backend::gather's forward and backward against the host.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/autograd.h"
#include "core/cpu/elementwise.h"
#include "core/cpu/reduce.h"
#include "core/cpu/softmax.h"
#include "core/cuda/ops/cuda_backend.h"
#include "core/device.h"
#include "layers/moe/balance/topk_routing.h"
#include "tests/cuda/device_test_util.h"

namespace moe {
namespace {

// Token t takes experts whose (t * 7 + e * 3) % 5 < t % 4 (tokens with t % 4 == 0 take none; up
// to every expert), experts ascending: ragged, token-major.
Selection ragged_selection(const Tensor& s) {
  const int64_t T = s.size(0), C = s.size(1);
  const std::vector<double> v = s.to_double_vector();
  Selection sel;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t e = 0; e < C; ++e)
      if ((t * 7 + e * 3) % 5 < t % 4) sel.push(t, e, v[size_t(t * C + e)]);
  return sel;
}

// The largest term the grad of the source is a difference of: with renormalization
// d s_k = scale * (w_k / z - sum_j w_j s_j / z^2), z the token's sum of chosen scores, so
// scale * max |w| / z; without it d s_k = scale * w_k. The difference leaves ulps of w / z, which
// for a small z exceed every other entry (seen on a fresh draw, at a one-choice token: 1.5e-5
// against 1e-6 of the largest entry, 10.3, with w / z ~ 100; the kernel now gives such a token an
// exact 0, as the host does, but a token with several choices is still such a difference).
double largest_grad_term(const Selection& sel, const Tensor& w, const GateOptions& opt) {
  const std::vector<double> wv = w.to_double_vector();
  std::vector<double> z(size_t(*std::max_element(sel.token.begin(), sel.token.end()) + 1), 0.0);
  for (size_t i = 0; i < sel.size(); ++i) z[size_t(sel.token[i])] += sel.score[i];
  double top = 0;
  for (size_t i = 0; i < sel.size(); ++i)
    top = std::max(top, std::abs(opt.scale * wv[i]) / (opt.renormalize ? z[size_t(sel.token[i])] : 1.0));
  return top;
}

class RaggedRoutingDevice : public ::testing::TestWithParam<std::pair<bool, double>> {
 protected:
  void SetUp() override { cuda::install_backend("RaggedRoutingDevice"); }
};

TEST_P(RaggedRoutingDevice, GatesAndGradsMatchTheHost) {
  const auto [renormalize, scale] = GetParam();
  const int64_t T = 37, C = 7;
  Tensor logits = test::random_host({T, C}, 41);
  Tensor host_src = softmax(logits, -1).detach();
  host_src.set_requires_grad(true);
  Tensor dev_src = host_src.detach().to(Device::cuda);
  dev_src.set_requires_grad(true);
  const Selection sel = ragged_selection(host_src.detach());
  ASSERT_GT(sel.size(), size_t(T));  // some tokens several choices, some none

  // One backward through a weighted sum of the gates on each side (one graph at a time: a
  // backward consumes the tape).
  const GateOptions opt{renormalize, scale};
  const Tensor w = test::random_host({int64_t(sel.size())}, 42);
  Routing rh = build_routing(host_src, sel, opt);
  sum_all(mul(rh.gate, w)).backward();
  Routing rd = build_routing(dev_src, sel, opt);
  sum_all(mul(rd.gate.to(Device::cpu), w)).backward();
  ASSERT_EQ(rd.gate.device(), Device::cuda);
  ASSERT_EQ(rd.token.device(), Device::cpu);
  EXPECT_EQ(rd.token.to_vector<int64_t>(), rh.token.to_vector<int64_t>());
  EXPECT_EQ(rd.expert.to_vector<int64_t>(), rh.expert.to_vector<int64_t>());
  EXPECT_EQ(rd.score.to_double_vector(), rh.score.to_double_vector());
  EXPECT_TRUE(test::near_rel_max(rd.gate, rh.gate, 1e-6, "gate"));

  ASSERT_TRUE(dev_src.grad().defined());
  double top_want = 0;
  for (double v : host_src.grad().to_double_vector()) top_want = std::max(top_want, std::abs(v));
  const double rel = 1e-6 * std::max(1.0, largest_grad_term(sel, w, opt) / top_want);
  EXPECT_TRUE(test::near_rel_max(dev_src.grad(), host_src.grad(), rel, "d source"));
}

INSTANTIATE_TEST_SUITE_P(Options, RaggedRoutingDevice,
                         ::testing::Values(std::make_pair(false, 1.0), std::make_pair(true, 1.0),
                                           std::make_pair(true, 2.5), std::make_pair(false, 0.5)));

TEST(BackendGather, ForwardAndBackwardMatchTheHost) {
  cuda::install_backend("BackendGather");
  Tensor x = test::random_host({11, 13}, 43);
  std::vector<int32_t> idx;
  for (int32_t i = 142; i >= 0; i -= 3) idx.push_back(i);  // distinct, descending, odd count
  Tensor xd = x.to(Device::cuda);
  xd.set_requires_grad(true);
  Tensor out = cuda_backend("test").gather(xd, Tensor::from_vector<int32_t>(idx, {int64_t(idx.size())}).to(Device::cuda));
  const std::vector<double> xv = x.to_double_vector(), got = out.to(Device::cpu).to_double_vector();
  ASSERT_EQ(got.size(), idx.size());
  for (size_t a = 0; a < idx.size(); ++a) EXPECT_EQ(got[a], xv[size_t(idx[a])]) << a;

  const Tensor w = test::random_host({int64_t(idx.size())}, 44);
  sum_all(mul(out.to(Device::cpu), w)).backward();
  const std::vector<double> g = xd.grad().to(Device::cpu).to_double_vector(), wv = w.to_double_vector();
  std::vector<double> want(xv.size(), 0.0);
  for (size_t a = 0; a < idx.size(); ++a) want[size_t(idx[a])] = wv[a];
  EXPECT_EQ(g, want);
  EXPECT_EQ(xd.grad().shape(), x.shape());
}

}  // namespace
}  // namespace moe
