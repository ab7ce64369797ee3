// RoPE forward / backward and the global-norm clipping kernels against double loops, fp32 and
// bf16, on odd shapes and a large position offset.
#include <gtest/gtest.h>

#include <cmath>

#include "core/cuda/clip.h"
#include "core/cuda/memory.h"
#include "core/cuda/rope.h"
#include "tests/cuda/kernel_test_util.h"

using namespace moe;
using namespace moe::cuda;
using namespace moe::test;

namespace {

template <class T>
void check_rope(long B, long S, long H, long Dh, int64_t offset) {
  const long n = B * S * H * Dh, half = Dh / 2;
  const double theta = 10000.0;
  auto x = round_bf16(random_normal(n, 61));
  auto g = round_bf16(random_normal(n, 62));
  DeviceBuffer<T> dx = upload<T>(x), dg = upload<T>(g), y(n), gx(n);
  rope_forward(dx.get(), y.get(), B, S, H, Dh, theta, offset);
  rope_backward(dg.get(), gx.get(), B, S, H, Dh, theta, offset);
  std::vector<double> wy(n), wg(n);
  for (long b = 0; b < B; ++b)
    for (long s = 0; s < S; ++s)
      for (long h = 0; h < H; ++h)
        for (long i = 0; i < half; ++i) {
          const long base = ((b * S + s) * H + h) * Dh;
          const double ang = double(offset + s) * std::pow(theta, -2.0 * i / Dh), c = std::cos(ang), sn = std::sin(ang);
          wy[base + i] = x[base + i] * c - x[base + i + half] * sn;
          wy[base + i + half] = x[base + i] * sn + x[base + i + half] * c;
          // backward = transpose of the rotation
          wg[base + i] = g[base + i] * c + g[base + i + half] * sn;
          wg[base + i + half] = -g[base + i] * sn + g[base + i + half] * c;
        }
  EXPECT_TRUE(all_near(to_f32(y.to_host()), wy, atol_for<T>(), rtol_for<T>())) << "forward";
  EXPECT_TRUE(all_near(to_f32(gx.to_host()), wg, atol_for<T>(), rtol_for<T>())) << "backward";
}

TEST(CudaRope, ForwardBackwardF32) {
  check_rope<float>(2, 7, 3, 10, 0);
  check_rope<float>(1, 5, 2, 6, 40000);  // long positions: the angle is formed in double
}
TEST(CudaRope, ForwardBackwardBf16) { check_rope<bf16>(2, 5, 3, 14, 17); }

template <class T>
void check_clip() {
  const size_t n1 = 2049, n2 = 77;
  auto a = round_bf16(random_normal(n1, 63)), b = round_bf16(random_normal(n2, 64, 3.0f));
  DeviceBuffer<T> da = upload<T>(a), db = upload<T>(b);
  DeviceBuffer<float> sum_sq(1), norm(1), coef(1);
  sum_sq.zero();
  accumulate_sum_squares(da.get(), n1, sum_sq.get());
  accumulate_sum_squares(db.get(), n2, sum_sq.get());
  double want = 0;
  for (float v : a) want += double(v) * v;
  for (float v : b) want += double(v) * v;
  EXPECT_NEAR(sum_sq.to_host()[0], want, 1e-5 * want);
  const float max_norm = 10.0f;
  clip_coefficient(sum_sq.get(), max_norm, norm.get(), coef.get());
  const double wnorm = std::sqrt(want), wcoef = std::min(1.0, max_norm / (wnorm + 1e-6));
  EXPECT_NEAR(norm.to_host()[0], wnorm, 1e-5 * wnorm);
  EXPECT_NEAR(coef.to_host()[0], wcoef, 1e-5);
  ASSERT_LT(wcoef, 1.0) << "the test must actually clip";
  scale_by_device_scalar(da.get(), coef.get(), n1);
  std::vector<double> wa(n1);
  for (size_t i = 0; i < n1; ++i) wa[i] = a[i] * wcoef;
  EXPECT_TRUE(all_near(to_f32(da.to_host()), wa, atol_for<T>(), rtol_for<T>())) << "scaled gradient";
  // A norm under the limit leaves the coefficient at exactly 1.
  clip_coefficient(sum_sq.get(), 1e6f, norm.get(), coef.get());
  EXPECT_EQ(coef.to_host()[0], 1.0f);
}

TEST(CudaClip, GlobalNormF32) { check_clip<float>(); }
TEST(CudaClip, GlobalNormBf16) { check_clip<bf16>(); }

}  // namespace
