// Row reductions, RMSNorm and softmax kernels (forward and backward) against double loops, fp32
// and bf16, on odd shapes (rows and cols not multiples of the warp or block).
#include <gtest/gtest.h>

#include <algorithm>

#include "core/cuda/memory.h"
#include "core/cuda/norm.h"
#include "core/cuda/reduce.h"
#include "core/cuda/softmax.h"
#include "tests/cuda/kernel_test_util.h"

using namespace moe;
using namespace moe::cuda;
using namespace moe::test;

namespace {

template <class T>
void check_sums(long rows, long cols) {
  auto x = round_bf16(random_normal(rows * cols, 7));
  DeviceBuffer<T> dx = upload<T>(x);
  DeviceBuffer<float> rs(rows), cs(cols);
  row_sum(dx.get(), rs.get(), rows, cols);
  col_sum(dx.get(), cs.get(), rows, cols);
  std::vector<double> wr(rows, 0), wc(cols, 0);
  for (long i = 0; i < rows; ++i)
    for (long j = 0; j < cols; ++j) wr[i] += x[i * cols + j], wc[j] += x[i * cols + j];
  // fp32 accumulation of up to a few hundred terms of size ~1: absolute error ~1e-5 * sqrt(n)
  EXPECT_TRUE(all_near(rs.to_host(), wr, 1e-4, 1e-5)) << "row_sum";
  EXPECT_TRUE(all_near(cs.to_host(), wc, 1e-4, 1e-5)) << "col_sum";
}

TEST(CudaReduce, RowAndColumnSums) {
  check_sums<float>(5, 333);   // row longer than the 256-thread block
  check_sums<float>(29, 7);     // row shorter than a warp
  check_sums<bf16>(11, 97);
}

template <class T>
void check_rms_norm(long rows, long cols) {
  const float eps = 1e-5f;
  auto x = round_bf16(random_normal(rows * cols, 8, 1.5f));
  auto w = round_bf16(random_normal(cols, 9, 0.5f));
  for (auto& v : w) v = round_bf16({v + 1.0f})[0];
  auto dy = round_bf16(random_normal(rows * cols, 10));
  DeviceBuffer<T> dx_in = upload<T>(x), dw_in = upload<T>(w), ddy = upload<T>(dy), y(rows * cols), dx(rows * cols);
  DeviceBuffer<float> rstd(rows), dw(cols);
  rms_norm_forward(dx_in.get(), dw_in.get(), y.get(), rstd.get(), rows, cols, eps);
  rms_norm_backward(ddy.get(), dx_in.get(), dw_in.get(), rstd.get(), dx.get(), dw.get(), rows, cols);

  std::vector<double> wy(rows * cols), wr(rows), wdx(rows * cols), wdw(cols, 0);
  for (long i = 0; i < rows; ++i) {
    double ss = 0, dot = 0;
    for (long j = 0; j < cols; ++j) ss += double(x[i * cols + j]) * x[i * cols + j];
    double r = 1 / std::sqrt(ss / cols + eps);
    wr[i] = r;
    for (long j = 0; j < cols; ++j) {
      wy[i * cols + j] = x[i * cols + j] * r * w[j];
      dot += double(w[j]) * dy[i * cols + j] * x[i * cols + j];
      wdw[j] += double(dy[i * cols + j]) * x[i * cols + j] * r;
    }
    for (long j = 0; j < cols; ++j)
      wdx[i * cols + j] = r * w[j] * dy[i * cols + j] - x[i * cols + j] * r * r * r / cols * dot;
  }
  const double at = atol_for<T>() * 10, rt = rtol_for<T>();  // sums over a row: 10x the element atol
  EXPECT_TRUE(all_near(rstd.to_host(), wr, 1e-5, 1e-5)) << "rstd";
  EXPECT_TRUE(all_near(to_f32(y.to_host()), wy, at, rt)) << "y";
  EXPECT_TRUE(all_near(to_f32(dx.to_host()), wdx, at, rt)) << "dx";
  EXPECT_TRUE(all_near(dw.to_host(), wdw, 1e-4, 1e-4)) << "dw (fp32 accumulation)";
}

TEST(CudaNorm, RmsNormForwardBackwardF32) {
  check_rms_norm<float>(4, 301);
  check_rms_norm<float>(5, 19);
  check_rms_norm<float>(203, 301);  // dw over 4 row chunks (the last of 11 rows) and 3 column blocks
}
TEST(CudaNorm, RmsNormForwardBackwardBf16) {
  check_rms_norm<bf16>(7, 129);
  check_rms_norm<bf16>(130, 129);  // dw over 3 row chunks
}

// No rows: dw is zero (its buffer starts poisoned), nothing else is touched.
TEST(CudaNorm, RmsNormBackwardOfNoRowsZeroesDw) {
  DeviceBuffer<float> dy(1), x(1), w(37), rstd(1), dx(1), dw(37);
  rms_norm_backward(dy.get(), x.get(), w.get(), rstd.get(), dx.get(), dw.get(), 0, 37);
  for (float v : dw.to_host()) EXPECT_EQ(v, 0.0f);
}

template <class T>
void check_softmax(long rows, long cols) {
  auto x = round_bf16(random_normal(rows * cols, 11, 3.0f));
  x[0] = 80.0f;  // a large logit: the max shift must keep exp finite
  auto dy = round_bf16(random_normal(rows * cols, 12));
  DeviceBuffer<T> dx_in = upload<T>(x), ddy = upload<T>(dy), y(rows * cols), dx(rows * cols);
  softmax_forward(dx_in.get(), y.get(), rows, cols);
  auto yh = to_f32(y.to_host());
  std::vector<double> wy(rows * cols), wdx(rows * cols);
  for (long i = 0; i < rows; ++i) {
    double m = *std::max_element(x.begin() + i * cols, x.begin() + (i + 1) * cols), s = 0;
    for (long j = 0; j < cols; ++j) s += std::exp(double(x[i * cols + j]) - m);
    for (long j = 0; j < cols; ++j) wy[i * cols + j] = std::exp(double(x[i * cols + j]) - m) / s;
  }
  EXPECT_TRUE(all_near(yh, wy, atol_for<T>(), rtol_for<T>())) << "forward";
  // Backward from the kernel's own y (as training uses it), checked against the formula in double.
  softmax_backward(y.get(), ddy.get(), dx.get(), rows, cols);
  for (long i = 0; i < rows; ++i) {
    double dot = 0;
    for (long j = 0; j < cols; ++j) dot += double(yh[i * cols + j]) * dy[i * cols + j];
    for (long j = 0; j < cols; ++j) wdx[i * cols + j] = yh[i * cols + j] * (dy[i * cols + j] - dot);
  }
  EXPECT_TRUE(all_near(to_f32(dx.to_host()), wdx, atol_for<T>(), rtol_for<T>())) << "backward";
}

TEST(CudaSoftmax, ForwardBackwardF32) {
  check_softmax<float>(4, 263);
  check_softmax<float>(6, 5);
}
TEST(CudaSoftmax, ForwardBackwardBf16) { check_softmax<bf16>(5, 131); }

}  // namespace
