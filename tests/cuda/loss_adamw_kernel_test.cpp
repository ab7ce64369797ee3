// Fused cross-entropy (forward, backward, ignore_index, bad target) and fused AdamW kernels
// against double loops; fp32 and bf16 logits / gradients, odd sizes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "core/cuda/adamw.h"
#include "core/cuda/loss.h"
#include "core/cuda/memory.h"
#include "tests/cuda/kernel_test_util.h"

using namespace moe;
using namespace moe::cuda;
using namespace moe::test;

namespace {

template <class T>
void check_cross_entropy(long rows, long vocab) {
  auto x = round_bf16(random_normal(rows * vocab, 21, 2.0f));
  std::vector<int64_t> t(rows);
  std::mt19937 gen(uint32_t(test_seed(22)));
  for (auto& v : t) v = int64_t(gen() % vocab);
  t[1] = -100;  // ignored
  t[rows - 1] = vocab - 1;
  DeviceBuffer<T> dx = upload<T>(x), dg(rows * vocab);
  DeviceBuffer<int64_t> dt(t);
  DeviceBuffer<float> lse(rows), stats(2);
  const float dloss = 0.7f;
  cross_entropy_forward(dx.get(), dt.get(), lse.get(), stats.get(), rows, vocab);
  cross_entropy_backward(dx.get(), dt.get(), lse.get(), stats.get(), dloss, dg.get(), rows, vocab);

  double loss = 0, count = 0;
  std::vector<double> wl(rows), wg(rows * vocab, 0);
  for (long i = 0; i < rows; ++i) {
    double m = *std::max_element(x.begin() + i * vocab, x.begin() + (i + 1) * vocab), s = 0;
    for (long j = 0; j < vocab; ++j) s += std::exp(double(x[i * vocab + j]) - m);
    wl[i] = m + std::log(s);
    if (t[i] == -100) continue;
    loss += wl[i] - x[i * vocab + t[i]];
    count += 1;
  }
  for (long i = 0; i < rows; ++i)
    if (t[i] != -100)
      for (long j = 0; j < vocab; ++j)
        wg[i * vocab + j] = dloss / count * (std::exp(x[i * vocab + j] - wl[i]) - (j == t[i] ? 1.0 : 0.0));
  auto st = stats.to_host();
  EXPECT_NEAR(st[0], loss / count, 1e-5 * std::max(1.0, loss / count));
  EXPECT_EQ(st[1], count);
  EXPECT_TRUE(all_near(lse.to_host(), wl, 1e-5, 1e-5)) << "lse";
  EXPECT_TRUE(all_near(to_f32(dg.to_host()), wg, std::is_same_v<T, bf16> ? 1e-3 : 1e-7, rtol_for<T>())) << "dlogits";
}

TEST(CudaLoss, CrossEntropyForwardBackwardF32) {
  check_cross_entropy<float>(4, 517);  // vocab longer than the 512-thread block
  check_cross_entropy<float>(7, 3);
}
TEST(CudaLoss, CrossEntropyForwardBackwardBf16) { check_cross_entropy<bf16>(5, 203); }

TEST(CudaLoss, CrossEntropyAllIgnoredAndBadTarget) {
  const long rows = 3, vocab = 11;
  DeviceBuffer<float> dx(random_normal(rows * vocab, 23)), lse(rows), stats(2), dg(rows * vocab);
  DeviceBuffer<int64_t> ignored(std::vector<int64_t>{-100, -100, -100});
  cross_entropy_forward(dx.get(), ignored.get(), lse.get(), stats.get(), rows, vocab);
  cross_entropy_backward(dx.get(), ignored.get(), lse.get(), stats.get(), 1.0f, dg.get(), rows, vocab);
  EXPECT_EQ(stats.to_host(), (std::vector<float>{0.0f, 0.0f}));
  for (float g : dg.to_host()) ASSERT_EQ(g, 0.0f);
  DeviceBuffer<int64_t> bad(std::vector<int64_t>{0, vocab, 2});
  cross_entropy_forward(dx.get(), bad.get(), lse.get(), stats.get(), rows, vocab);
  EXPECT_TRUE(std::isnan(stats.to_host()[0])) << "a target outside [0, vocab) must poison the loss";
}

template <class G>
void check_adamw() {
  const size_t n = 1337;
  AdamwHyper h;
  h.lr = 3e-3f, h.beta1 = 0.85f, h.beta2 = 0.98f, h.eps = 1e-6f, h.weight_decay = 0.1f;
  auto p = random_normal(n, 31), m = random_normal(n, 32, 0.1f), v = random_normal(n, 33, 0.1f);
  for (auto& x : v) x = x * x;
  std::vector<double> wp(p.begin(), p.end()), wm(m.begin(), m.end()), wv(v.begin(), v.end());
  DeviceBuffer<float> dp(p), dm(m), dv(v);
  DeviceBuffer<bf16> pbf(n);
  for (long step = 1; step <= 3; ++step) {
    auto g = round_bf16(random_normal(n, 40 + step));
    DeviceBuffer<G> dg = upload<G>(g);
    h.step = step;
    adamw_step(dp.get(), dg.get(), dm.get(), dv.get(), pbf.get(), n, h);
    const double bc1 = 1 - std::pow(double(h.beta1), step), bc2 = 1 - std::pow(double(h.beta2), step);
    for (size_t i = 0; i < n; ++i) {
      wm[i] = h.beta1 * wm[i] + (1 - double(h.beta1)) * g[i];
      wv[i] = h.beta2 * wv[i] + (1 - double(h.beta2)) * double(g[i]) * g[i];
      wp[i] = wp[i] * (1 - double(h.lr) * h.weight_decay) - h.lr * (wm[i] / bc1) / (std::sqrt(wv[i] / bc2) + h.eps);
    }
  }
  EXPECT_TRUE(all_near(dp.to_host(), wp, 1e-5, 1e-5)) << "param";
  EXPECT_TRUE(all_near(dm.to_host(), wm, 1e-6, 1e-5)) << "m";
  EXPECT_TRUE(all_near(dv.to_host(), wv, 1e-6, 1e-5)) << "v";
  EXPECT_TRUE(all_near(to_f32(pbf.to_host()), wp, kBf16Atol, kBf16Rtol)) << "bf16 copy";
  auto pb = pbf.to_host();
  auto pf = dp.to_host();
  for (size_t i = 0; i < n; ++i) ASSERT_EQ(pb[i].bits, float_to_bf16(pf[i]).bits) << "bf16 copy is the rounded master";
}

TEST(CudaAdamw, FusedStepF32Grads) { check_adamw<float>(); }
TEST(CudaAdamw, FusedStepBf16Grads) { check_adamw<bf16>(); }

}  // namespace
