// The MoE layer's device kernels composed as the layer will use them (top-k -> permute plan ->
// row permutation -> grouped-GEMM SwiGLU experts -> gated combine, and the backward chain),
// checked against a per-token double loop: the kernels' data contracts fit together.
#include <gtest/gtest.h>

#include <cmath>

#include "core/cuda/grouped_gemm.h"
#include "core/cuda/memory.h"
#include "core/cuda/permute.h"
#include "core/cuda/router.h"
#include "tests/cuda/kernel_test_util.h"

using namespace moe;
using namespace moe::cuda;
using namespace moe::test;

namespace {

double silu(double x) { return x / (1 + std::exp(-x)); }
double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::abs(x));
  return m;
}

TEST(CudaMoePipeline, TopkPermuteExpertsCombineForwardAndBackward) {
  const long T = 37, D = 40, H = 24;
  const int E = 6, k = 2;
  const long n = T * k;
  auto scores = random_normal(static_cast<size_t>(T * E), 131);
  for (long t = 0; t < T; t += 2) scores[static_cast<size_t>(t * E)] += 2.0f;  // expert 0 busy: uneven groups
  auto x = round_bf16(random_normal(static_cast<size_t>(T * D), 132));
  auto w1 = round_bf16(random_normal(static_cast<size_t>(E * H * D), 133, 0.15f));
  auto w3 = round_bf16(random_normal(static_cast<size_t>(E * H * D), 134, 0.15f));
  auto w2 = round_bf16(random_normal(static_cast<size_t>(E * D * H), 135, 0.2f));
  auto dy = round_bf16(random_normal(static_cast<size_t>(T * D), 136));

  // Forward on the device.
  DeviceBuffer<float> ds(scores), gates(static_cast<size_t>(n)), d_gates(static_cast<size_t>(n));
  DeviceBuffer<int32_t> ids(static_cast<size_t>(n)), offsets(E + 1), dest(static_cast<size_t>(n)),
      source(static_cast<size_t>(n));
  DeviceBuffer<bf16> dx_in = upload<bf16>(x), dw1 = upload<bf16>(w1), dw3 = upload<bf16>(w3), dw2 = upload<bf16>(w2),
                     xs(static_cast<size_t>(n * D)), h1(static_cast<size_t>(n * H)), h3(static_cast<size_t>(n * H)),
                     h(static_cast<size_t>(n * H)), ys(static_cast<size_t>(n * D)), y(static_cast<size_t>(T * D));
  router_topk(ds.get(), gates.get(), ids.get(), T, E, k);  // gates: the selected scores themselves
  permute_plan(ids.get(), n, E, offsets.get(), dest.get(), source.get());
  permute_rows(dx_in.get(), source.get(), offsets.get(), E, n, k, D, xs.get());
  experts_forward(xs.get(), dw1.get(), dw3.get(), dw2.get(), offsets.get(), E, n, D, H, h1.get(), h3.get(), h.get(),
                  ys.get());
  unpermute_combine(ys.get(), dest.get(), gates.get(), T, k, D, y.get());
  // Backward: combine -> experts -> permute (whose backward is the ungated combine).
  DeviceBuffer<bf16> ddy = upload<bf16>(dy), d_ys(static_cast<size_t>(n * D)), d_xs(static_cast<size_t>(n * D)),
                     dx(static_cast<size_t>(T * D));
  DeviceBuffer<float> g1(static_cast<size_t>(E * H * D)), g3(static_cast<size_t>(E * H * D)),
      g2(static_cast<size_t>(E * D * H));
  unpermute_combine_backward(ddy.get(), ys.get(), dest.get(), gates.get(), T, k, D, d_ys.get(), d_gates.get());
  experts_backward(xs.get(), dw1.get(), dw3.get(), dw2.get(), offsets.get(), E, n, D, H, h1.get(), h3.get(), h.get(),
                   d_ys.get(), d_xs.get(), g1.get(), g3.get(), g2.get());
  unpermute_combine(d_xs.get(), dest.get(), static_cast<const float*>(nullptr), T, k, D, dx.get());

  // The same per token in double: y_t = sum_s g_ts f_e(x_t), with the kernel's choices.
  auto idx = ids.to_host();
  auto g = gates.to_host();
  std::vector<double> wy(static_cast<size_t>(T * D), 0), wdx(static_cast<size_t>(T * D), 0),
      wdg(static_cast<size_t>(n), 0), wg1(static_cast<size_t>(E * H * D), 0);
  for (long t = 0; t < T; ++t)
    for (int s = 0; s < k; ++s) {
      const long a = t * k + s, e = idx[static_cast<size_t>(a)];
      std::vector<double> a1(static_cast<size_t>(H)), a3(static_cast<size_t>(H)), dh(static_cast<size_t>(H), 0);
      for (long i = 0; i < H; ++i) {
        for (long d = 0; d < D; ++d) {
          a1[size_t(i)] += double(w1[static_cast<size_t>((e * H + i) * D + d)]) * x[static_cast<size_t>(t * D + d)];
          a3[size_t(i)] += double(w3[static_cast<size_t>((e * H + i) * D + d)]) * x[static_cast<size_t>(t * D + d)];
        }
      }
      for (long d = 0; d < D; ++d) {
        double f = 0;
        for (long i = 0; i < H; ++i) {
          f += double(w2[static_cast<size_t>((e * D + d) * H + i)]) * silu(a1[size_t(i)]) * a3[size_t(i)];
          dh[size_t(i)] +=
              double(w2[static_cast<size_t>((e * D + d) * H + i)]) * g[size_t(a)] * dy[static_cast<size_t>(t * D + d)];
        }
        wy[static_cast<size_t>(t * D + d)] += g[size_t(a)] * f;
        wdg[size_t(a)] += double(dy[static_cast<size_t>(t * D + d)]) * f;
      }
      for (long i = 0; i < H; ++i) {
        const double sg = 1 / (1 + std::exp(-a1[size_t(i)]));
        const double d1 = dh[size_t(i)] * a3[size_t(i)] * sg * (1 + a1[size_t(i)] * (1 - sg));
        const double d3 = dh[size_t(i)] * silu(a1[size_t(i)]);
        for (long d = 0; d < D; ++d) {
          wdx[static_cast<size_t>(t * D + d)] +=
              d1 * w1[static_cast<size_t>((e * H + i) * D + d)] + d3 * w3[static_cast<size_t>((e * H + i) * D + d)];
          wg1[static_cast<size_t>((e * H + i) * D + d)] += d1 * x[static_cast<size_t>(t * D + d)];
        }
      }
    }
  // bf16 intermediates (xs is exact, h1 / h3 / h / ys / d_ys rounded): relative 1e-2 of the largest.
  EXPECT_TRUE(all_near(to_f32(y.to_host()), wy, 1e-2 * max_abs(wy), 1e-2)) << "y";
  EXPECT_TRUE(all_near(d_gates.to_host(), wdg, 1e-2 * max_abs(wdg), 1e-2)) << "d_gates";
  EXPECT_TRUE(all_near(to_f32(dx.to_host()), wdx, 1e-2 * max_abs(wdx), 1e-2)) << "dx";
  EXPECT_TRUE(all_near(g1.to_host(), wg1, 1e-2 * max_abs(wg1), 1e-2)) << "dw1";
  auto off = offsets.to_host();
  EXPECT_GT(off[1] - off[0], 3 * T * k / (2 * E)) << "expert 0 is busier than the mean: uneven groups";
}

}  // namespace
