// Experts: grouped GEMM values against a naive loop, its f64 gradients (with an empty
// segment), and the stacked-weight SwiGLU expert FFN.
#include <gtest/gtest.h>

#include <cmath>

#include "core/ops.h"
#include "layers/moe/experts.h"
#include "tests/gradcheck.h"

using namespace moe;
using test::randn_f64;

TEST(MoeExperts, GroupedMatmulMatchesNaive) {
  const int64_t N = 11, K = 5, M = 3, E = 4;
  std::vector<int64_t> off{0, 4, 4, 9, 11};  // expert 1 empty
  Tensor x = randn_f64({N, K}, 1, 1.0, false), w = randn_f64({E, M, K}, 2, 1.0, false);
  Tensor y = grouped_matmul(x, w, off);
  auto px = x.to_vector<double>(), pw = w.to_vector<double>(), py = y.to_vector<double>();
  for (int64_t e = 0; e < E; ++e)
    for (int64_t r = off[e]; r < off[e + 1]; ++r)
      for (int64_t m = 0; m < M; ++m) {
        double s = 0;
        for (int64_t k = 0; k < K; ++k) s += px[r * K + k] * pw[(e * M + m) * K + k];
        EXPECT_NEAR(py[r * M + m], s, 1e-12);
      }
  // f32 path agrees with f64 to single precision.
  Tensor y32 = grouped_matmul(x.to(DType::f32), w.to(DType::f32), off);
  auto v32 = y32.to_vector<float>();
  for (size_t i = 0; i < v32.size(); ++i) EXPECT_NEAR(v32[i], py[i], 1e-5);
}

TEST(MoeExperts, GradcheckGroupedMatmul) {
  std::vector<int64_t> off{0, 3, 3, 7, 13};
  EXPECT_GRADCHECK([off](const std::vector<Tensor>& v) { return grouped_matmul(v[0], v[1], off); },
                   {randn_f64({13, 5}, 3), randn_f64({4, 7, 5}, 4)});
  // The empty expert's weight grad is exactly zero.
  Tensor w = randn_f64({4, 7, 5}, 5);
  grouped_matmul(randn_f64({13, 5}, 6, 1.0, false), w, off).backward(Tensor::ones({13, 7}, DType::f64));
  auto g = w.grad().to_vector<double>();
  for (int64_t i = 35; i < 70; ++i) EXPECT_EQ(g[i], 0.0);
  EXPECT_THROW(grouped_matmul(randn_f64({13, 5}, 6), w, {0, 3, 7, 13}), Error);
  EXPECT_THROW(grouped_matmul(randn_f64({13, 5}, 6), w, {0, 5, 3, 7, 13}), Error);
}

TEST(MoeExperts, GradcheckExpertFfn) {
  Philox rng(3, 1);
  Experts ex(3, 5, 7, 0.5, 0.4, rng, DType::f64);
  std::vector<int64_t> off{0, 4, 4, 9};
  auto params = ex.named_parameters("experts");
  ASSERT_EQ(params.size(), 3u);
  EXPECT_EQ(params[0].first, "experts.w1");
  EXPECT_EQ(params[0].second.shape(), (Shape{3, 7, 5}));
  EXPECT_EQ(params[2].first, "experts.w2");
  EXPECT_EQ(params[2].second.shape(), (Shape{3, 5, 7}));
  EXPECT_GRADCHECK([&](const std::vector<Tensor>& v) { return ex.forward(v[0], off); },
                   {randn_f64({9, 5}, 9), params[0].second, params[1].second, params[2].second}, 1e-6, 1e-8, 1e-6);
}
