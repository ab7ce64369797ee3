// Element-wise kernels (casts, add/mul/scale, SwiGLU forward/backward) against double loops,
// fp32 and bf16, on a size that is not a multiple of the block.
#include <gtest/gtest.h>

#include "core/cuda/elementwise.h"
#include "core/cuda/memory.h"
#include "tests/cuda/kernel_test_util.h"

using namespace moe;
using namespace moe::cuda;
using namespace moe::test;

namespace {

constexpr size_t kN = 1000003 % 9973;  // 2757: odd, not a multiple of 256

TEST(CudaElementwise, CastsRoundTripAndMatchHostRounding) {
  auto x = random_normal(kN, 1, 3.0f);
  x[0] = 1.0f + 1.0f / 256;  // a tie: rounds to even
  x[1] = -0.0f;
  DeviceBuffer<float> dx(x), back(kN);
  DeviceBuffer<bf16> db(kN);
  cast_f32_to_bf16(dx.get(), db.get(), kN);
  cast_bf16_to_f32(db.get(), back.get(), kN);
  auto b = db.to_host();
  auto r = back.to_host();
  for (size_t i = 0; i < kN; ++i) {
    ASSERT_EQ(b[i].bits, float_to_bf16(x[i]).bits) << i;  // bit-exact with the CPU conversion
    ASSERT_EQ(r[i], bf16_to_float(b[i])) << i;
  }
}

template <class T>
void check_binary(double atol, double rtol) {
  auto a = round_bf16(random_normal(kN, 2)), b = round_bf16(random_normal(kN, 3));
  DeviceBuffer<T> da = upload<T>(a), db = upload<T>(b), out(kN);
  std::vector<double> want(kN);
  add(da.get(), db.get(), out.get(), kN);
  for (size_t i = 0; i < kN; ++i) want[i] = double(a[i]) + b[i];
  EXPECT_TRUE(all_near(to_f32(out.to_host()), want, atol, rtol)) << "add";
  mul(da.get(), db.get(), out.get(), kN);
  for (size_t i = 0; i < kN; ++i) want[i] = double(a[i]) * b[i];
  EXPECT_TRUE(all_near(to_f32(out.to_host()), want, atol, rtol)) << "mul";
  scale(da.get(), -1.75f, out.get(), kN);
  for (size_t i = 0; i < kN; ++i) want[i] = -1.75 * a[i];
  EXPECT_TRUE(all_near(to_f32(out.to_host()), want, atol, rtol)) << "scale";
}

TEST(CudaElementwise, AddMulScaleF32) { check_binary<float>(kF32Atol, kF32Rtol); }
TEST(CudaElementwise, AddMulScaleBf16) { check_binary<bf16>(kBf16Atol, kBf16Rtol); }

template <class T>
void check_swiglu(double atol, double rtol) {
  const size_t n = 1543;
  auto g = round_bf16(random_normal(n, 4, 2.0f)), u = round_bf16(random_normal(n, 5)), d = round_bf16(random_normal(n, 6));
  DeviceBuffer<T> dg = upload<T>(g), du = upload<T>(u), dd = upload<T>(d), out(n), dgate(n), dup(n);
  swiglu_forward(dg.get(), du.get(), out.get(), n);
  swiglu_backward(dg.get(), du.get(), dd.get(), dgate.get(), dup.get(), n);
  std::vector<double> y(n), wg(n), wu(n);
  for (size_t i = 0; i < n; ++i) {
    double s = 1 / (1 + std::exp(-double(g[i])));
    y[i] = g[i] * s * u[i];
    wg[i] = d[i] * u[i] * (s + g[i] * s * (1 - s));
    wu[i] = d[i] * g[i] * s;
  }
  EXPECT_TRUE(all_near(to_f32(out.to_host()), y, atol, rtol)) << "forward";
  EXPECT_TRUE(all_near(to_f32(dgate.to_host()), wg, atol, rtol)) << "d_gate";
  EXPECT_TRUE(all_near(to_f32(dup.to_host()), wu, atol, rtol)) << "d_up";
}

TEST(CudaElementwise, SwigluForwardBackwardF32) { check_swiglu<float>(kF32Atol, kF32Rtol); }
TEST(CudaElementwise, SwigluForwardBackwardBf16) { check_swiglu<bf16>(kBf16Atol, kBf16Rtol); }

}  // namespace

namespace {

template <class T>
void check_sigmoid() {
  const size_t n = 1111;
  auto x = round_bf16(random_normal(n, 7, 4.0f)), dy = round_bf16(random_normal(n, 8));
  DeviceBuffer<T> dx_in = upload<T>(x), ddy = upload<T>(dy), y(n), dx(n);
  sigmoid_forward(dx_in.get(), y.get(), n);
  sigmoid_backward(y.get(), ddy.get(), dx.get(), n);
  auto yh = to_f32(y.to_host());
  std::vector<double> wy(n), wdx(n);
  for (size_t i = 0; i < n; ++i) {
    wy[i] = 1 / (1 + std::exp(-double(x[i])));
    wdx[i] = dy[i] * double(yh[i]) * (1 - double(yh[i]));  // from the kernel's own y, as training uses it
  }
  EXPECT_TRUE(all_near(yh, wy, atol_for<T>(), rtol_for<T>())) << "forward";
  EXPECT_TRUE(all_near(to_f32(dx.to_host()), wdx, atol_for<T>(), rtol_for<T>())) << "backward";
}

TEST(CudaElementwise, SigmoidForwardBackwardF32) { check_sigmoid<float>(); }
TEST(CudaElementwise, SigmoidForwardBackwardBf16) { check_sigmoid<bf16>(); }

}  // namespace
