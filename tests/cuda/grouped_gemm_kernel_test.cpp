// Tensor-core grouped GEMM against the CPU: the SwiGLU experts of layers/moe/experts in double
// (forward, and the input and weight gradients of its autograd backward) on ragged expert groups
// (an empty expert, one of a single row, one spanning two row tiles) and odd model sizes; and the
// three GEMM forms on their own with fp32 output and accumulation.
#include <gtest/gtest.h>

#include <numeric>

#include "core/cuda/grouped_gemm.h"
#include "core/cuda/memory.h"
#include "core/error.h"
#include "core/ops.h"
#include "layers/moe/experts.h"
#include "tests/cuda/kernel_test_util.h"

using namespace moe;
using namespace moe::cuda;
using namespace moe::test;

namespace {

std::vector<int64_t> offsets_of(const std::vector<int64_t>& sizes) {
  std::vector<int64_t> off(sizes.size() + 1, 0);
  std::partial_sum(sizes.begin(), sizes.end(), off.begin() + 1);
  return off;
}
std::vector<int32_t> to_i32(const std::vector<int64_t>& v) { return std::vector<int32_t>(v.begin(), v.end()); }

double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::abs(x));
  return m;
}

// bf16 operands and bf16 intermediates (h1, h3, h) against the unrounded double pipeline: each
// rounding is a relative 2^-9, so errors are measured relative to the tensor's largest entry.
::testing::AssertionResult near_bf16(const std::vector<float>& got, const std::vector<double>& want, double rel) {
  return all_near(got, want, rel * max_abs(want), rel);
}

TEST(CudaGroupedGemm, SwigluExpertsMatchCpuForwardAndBackward) {
  const std::vector<int64_t> sizes = {70, 3, 0, 29, 1};  // 103 rows
  const int E = int(sizes.size());
  const long D = 40, H = 24, N = 103;
  const auto off = offsets_of(sizes);
  auto x = round_bf16(random_normal(static_cast<size_t>(N * D), 91));
  auto w1 = round_bf16(random_normal(static_cast<size_t>(E * H * D), 92, 0.15f)),
       w3 = round_bf16(random_normal(static_cast<size_t>(E * H * D), 93, 0.15f));
  auto w2 = round_bf16(random_normal(static_cast<size_t>(E * D * H), 94, 0.2f));
  auto dy = round_bf16(random_normal(static_cast<size_t>(N * D), 95));

  Philox rng;
  Experts experts(E, D, H, 0.02, 0.02, rng, DType::f64);
  auto f64 = [](const std::vector<float>& v, const Shape& s) {
    return Tensor::from_vector<double>(std::vector<double>(v.begin(), v.end()), s);
  };
  Tensor(experts.w1()).copy_(f64(w1, {E, H, D}));
  Tensor(experts.w3()).copy_(f64(w3, {E, H, D}));
  Tensor(experts.w2()).copy_(f64(w2, {E, D, H}));
  Tensor xs = f64(x, {N, D});
  xs.set_requires_grad(true);
  Tensor y = experts.forward(xs, off);
  y.backward(f64(dy, {N, D}));

  DeviceBuffer<bf16> dx_in = upload<bf16>(x), dw1 = upload<bf16>(w1), dw3 = upload<bf16>(w3), dw2 = upload<bf16>(w2),
                     ddy = upload<bf16>(dy), h1(static_cast<size_t>(N * H)), h3(static_cast<size_t>(N * H)),
                     h(static_cast<size_t>(N * H)), dy_out(static_cast<size_t>(N * D)), dx(static_cast<size_t>(N * D));
  DeviceBuffer<int32_t> doff(to_i32(off));
  DeviceBuffer<float> g1(static_cast<size_t>(E * H * D)), g3(static_cast<size_t>(E * H * D)),
      g2(static_cast<size_t>(E * D * H));
  experts_forward(dx_in.get(), dw1.get(), dw3.get(), dw2.get(), doff.get(), E, N, D, H, h1.get(), h3.get(), h.get(),
                  dy_out.get());
  experts_backward(dx_in.get(), dw1.get(), dw3.get(), dw2.get(), doff.get(), E, N, D, H, h1.get(), h3.get(), h.get(),
                   ddy.get(), dx.get(), g1.get(), g3.get(), g2.get());
  EXPECT_TRUE(near_bf16(to_f32(dy_out.to_host()), y.to_double_vector(), 1e-2)) << "y";
  EXPECT_TRUE(near_bf16(to_f32(dx.to_host()), xs.grad().to_double_vector(), 1e-2)) << "dx";
  EXPECT_TRUE(near_bf16(g1.to_host(), experts.w1().grad().to_double_vector(), 1e-2)) << "dw1";
  EXPECT_TRUE(near_bf16(g3.to_host(), experts.w3().grad().to_double_vector(), 1e-2)) << "dw3";
  EXPECT_TRUE(near_bf16(g2.to_host(), experts.w2().grad().to_double_vector(), 1e-2)) << "dw2";
  auto g = g1.to_host();
  for (long i = 2 * H * D; i < 3 * H * D; ++i) ASSERT_EQ(g[static_cast<size_t>(i)], 0.0f) << "expert 2 has no rows";
}

// The three forms with fp32 output on bf16 operands: only the summation order differs from the
// double loops, so fp32 tolerances apply; accumulate adds onto what is there.
void check_forms(long M, long K) {
  const std::vector<int64_t> sizes = {0, 65, 17};  // an expert of 65 rows: two row tiles, the second of one row
  const int E = 3;
  const long N = 82;
  const auto off = offsets_of(sizes);
  auto a = round_bf16(random_normal(static_cast<size_t>(N * K), 96)),
       w = round_bf16(random_normal(static_cast<size_t>(E * M * K), 97));
  auto g = round_bf16(random_normal(static_cast<size_t>(N * M), 98));
  auto base = random_normal(static_cast<size_t>(N * M), 99);
  DeviceBuffer<bf16> da = upload<bf16>(a), dw = upload<bf16>(w), dg = upload<bf16>(g);
  DeviceBuffer<int32_t> doff(to_i32(off));
  DeviceBuffer<float> y(base), dx(static_cast<size_t>(N * K)), gw(static_cast<size_t>(E * M * K));
  grouped_gemm_nt(da.get(), dw.get(), doff.get(), E, N, M, K, y.get(), /*accumulate=*/true);
  grouped_gemm_nn(dg.get(), dw.get(), doff.get(), E, N, M, K, dx.get());
  grouped_gemm_tn(dg.get(), da.get(), doff.get(), E, N, M, K, gw.get());
  std::vector<double> wy(static_cast<size_t>(N * M)), wdx(static_cast<size_t>(N * K), 0.0),
      wgw(static_cast<size_t>(E * M * K), 0.0);
  for (int e = 0; e < E; ++e)
    for (long r = off[static_cast<size_t>(e)]; r < off[static_cast<size_t>(e) + 1]; ++r) {
      for (long m = 0; m < M; ++m) {
        double s = base[static_cast<size_t>(r * M + m)];
        for (long k = 0; k < K; ++k)
          s += double(a[static_cast<size_t>(r * K + k)]) * w[static_cast<size_t>((e * M + m) * K + k)];
        wy[static_cast<size_t>(r * M + m)] = s;
        for (long k = 0; k < K; ++k) {
          wdx[static_cast<size_t>(r * K + k)] +=
              double(g[static_cast<size_t>(r * M + m)]) * w[static_cast<size_t>((e * M + m) * K + k)];
          wgw[static_cast<size_t>((e * M + m) * K + k)] +=
              double(g[static_cast<size_t>(r * M + m)]) * a[static_cast<size_t>(r * K + k)];
        }
      }
    }
  EXPECT_TRUE(all_near(y.to_host(), wy, 1e-4, 1e-5)) << "nt, accumulated";
  EXPECT_TRUE(all_near(dx.to_host(), wdx, 1e-4, 1e-5)) << "nn";
  EXPECT_TRUE(all_near(gw.to_host(), wgw, 1e-4, 1e-5)) << "tn";
  EXPECT_THROW(grouped_gemm_nt(da.get(), dw.get(), doff.get(), 0, N, M, K, y.get()), Error);
}

TEST(CudaGroupedGemm, NtNnTnFormsWithFp32OutputAndAccumulation) {
  check_forms(131, 33);  // M > one 128-column tile; K not a multiple of 8: element-wise loads
  check_forms(136, 48);  // multiples of 8: the 16-byte chunk loads
}

}  // namespace
