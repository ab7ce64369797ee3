// GEMMs large enough to be split over threads by rows (matmul, linear forward and its backward
// with dx and dW on separate threads): values against naive double loops, odd row counts.
#include <gtest/gtest.h>

#include "core/ops.h"
#include "tests/gradcheck.h"

using namespace moe;

namespace {

// c[i][j] = sum_k a[i][k] b[k][j] in double over row-major vectors.
std::vector<double> naive(const std::vector<double>& a, const std::vector<double>& b, int64_t m, int64_t k, int64_t n) {
  std::vector<double> c(size_t(m * n), 0.0);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t p = 0; p < k; ++p)
      for (int64_t j = 0; j < n; ++j) c[size_t(i * n + j)] += a[size_t(i * k + p)] * b[size_t(p * n + j)];
  return c;
}

void expect_close(const std::vector<double>& got, const std::vector<double>& ref, double tol, const char* what) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  for (size_t i = 0; i < ref.size(); ++i) ASSERT_NEAR(got[i], ref[i], tol) << what << " at " << i;
}

std::vector<double> transposed(const std::vector<double>& a, int64_t rows, int64_t cols) {
  std::vector<double> t(a.size());
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) t[size_t(j * rows + i)] = a[size_t(i * cols + j)];
  return t;
}

}  // namespace

TEST(MatmulSplit, LargeLinearForwardAndBackwardMatchNaive) {
  // 301 x 97 x 131 = 3.8M multiply-adds: above the split threshold; 301 rows split unevenly.
  const int64_t M = 301, K = 97, N = 131;
  Tensor x = test::randn_f32({M, K}, 1, 0.5, true), w = test::randn_f32({N, K}, 2, 0.5, true);
  Tensor seed = test::randn_f32({M, N}, 3);
  Tensor y = linear(x, w);
  y.backward(seed);
  std::vector<double> xv = x.to_double_vector(), wv = w.to_double_vector(), gv = seed.to_double_vector();
  expect_close(y.to_double_vector(), naive(xv, transposed(wv, N, K), M, K, N), 1e-4, "y = x W^T");
  expect_close(x.grad().to_double_vector(), naive(gv, wv, M, N, K), 1e-4, "dx = g W");
  expect_close(w.grad().to_double_vector(), naive(transposed(gv, M, N), xv, N, M, K), 1e-3, "dW = g^T x");
}

TEST(MatmulSplit, TransposedLeftOperandSplitsByItsColumns) {
  // a^T b with a [K, M]: op(A)'s rows are a's columns, so each piece starts at a column offset.
  const int64_t M = 260, K = 83, N = 120;
  Tensor a = test::randn_f32({K, M}, 4), b = test::randn_f32({K, N}, 5);
  Tensor c = matmul(a.transpose(0, 1), b);
  expect_close(c.to_double_vector(), naive(transposed(a.to_double_vector(), K, M), b.to_double_vector(), M, K, N), 1e-4,
               "a^T b");
}

TEST(MatmulSplit, DeterministicRunToRun) {
  Tensor x = test::randn_f32({517, 128}, 6), w = test::randn_f32({128, 128}, 7, 0.1, true);
  std::vector<float> y0, g0;
  for (int run = 0; run < 3; ++run) {
    Tensor wr = w.detach().clone().set_requires_grad(true);
    Tensor y = linear(x, wr);
    y.backward(Tensor::ones(y.shape()));
    if (run == 0) {
      y0 = y.to_vector<float>();
      g0 = wr.grad().to_vector<float>();
    } else {
      EXPECT_EQ(y.to_vector<float>(), y0);
      EXPECT_EQ(wr.grad().to_vector<float>(), g0);
    }
  }
}
