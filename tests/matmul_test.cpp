// matmul and linear: values against a naive triple loop (contiguous, transposed and strided
// views, shared and batched B), f64 gradient checks on odd shapes, and the shape errors.
#include <gtest/gtest.h>

#include <cmath>

#include "core/allocator.h"
#include "core/ops.h"
#include "tests/gradcheck.h"

using namespace moe;
using test::randn_f32;
using test::randn_f64;

namespace {

// Naive reference: a [batch..., M, K] times b [K, N] (shared) or [batch..., K, N], in double.
std::vector<double> naive_matmul(const Tensor& a, const Tensor& b) {
  std::vector<double> va = a.to_double_vector(), vb = b.to_double_vector();
  int64_t m = a.size(-2), k = a.size(-1), n = b.size(-1);
  int64_t batch = a.numel() / std::max<int64_t>(m * k, 1);
  bool shared = b.dim() == 2;
  std::vector<double> out(size_t(batch * m * n), 0.0);
  for (int64_t p = 0; p < batch; ++p)
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        double s = 0;
        for (int64_t q = 0; q < k; ++q)
          s += va[size_t(p * m * k + i * k + q)] * vb[size_t((shared ? 0 : p * k * n) + q * n + j)];
        out[size_t(p * m * n + i * n + j)] = s;
      }
  return out;
}

void expect_close(const std::vector<double>& got, const std::vector<double>& want, double tol) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_NEAR(got[i], want[i], tol * (1 + std::abs(want[i]))) << "element " << i;
}

void expect_matmul_matches(const Tensor& a, const Tensor& b, double tol) {
  Tensor y = matmul(a, b);
  Shape want_shape = a.shape();
  want_shape.back() = b.size(-1);
  EXPECT_EQ(y.shape(), want_shape);
  expect_close(y.to_double_vector(), naive_matmul(a, b), tol);
}

using Fn = std::function<Tensor(const std::vector<Tensor>&)>;

}  // namespace

TEST(Matmul, ForwardMatchesNaiveLoopF32AndF64) {
  expect_matmul_matches(randn_f32({13, 11}, 1), randn_f32({11, 7}, 2), 1e-5);
  expect_matmul_matches(randn_f32({5, 7, 3}, 3), randn_f32({3, 4}, 4), 1e-5);       // shared B
  expect_matmul_matches(randn_f32({3, 5, 7}, 5), randn_f32({3, 7, 4}, 6), 1e-5);    // batched
  expect_matmul_matches(randn_f32({2, 3, 5, 4}, 7), randn_f32({2, 3, 4, 6}, 8), 1e-5);
  expect_matmul_matches(randn_f64({9, 17}, 9, 1.0, false), randn_f64({17, 5}, 10, 1.0, false), 1e-12);
  // Per-batch work above OpenBLAS's single-thread threshold: the sequential batch loop.
  expect_matmul_matches(randn_f32({2, 70, 65}, 11), randn_f32({2, 65, 67}, 12), 1e-4);
  // Many small batches (each below OpenBLAS's threading threshold): the OpenMP batch loop.
  expect_matmul_matches(randn_f32({40, 9, 17}, 13), randn_f32({40, 17, 13}, 14), 1e-5);
  // Tiny batches, too little work for a parallel region.
  expect_matmul_matches(randn_f32({37, 3, 5}, 15), randn_f32({37, 5, 2}, 16), 1e-5);
}

TEST(Matmul, TransposedAndStridedViewsMatchContiguous) {
  Tensor at = randn_f32({11, 13}, 21).transpose(0, 1);  // [13, 11] with strides (1, 13)
  Tensor bt = randn_f32({7, 11}, 22).transpose(0, 1);   // [11, 7] with strides (1, 11)
  ASSERT_FALSE(at.is_contiguous());
  expect_matmul_matches(at, bt, 1e-5);
  expect_matmul_matches(at, randn_f32({11, 7}, 23), 1e-5);
  // Column slices: row-major with a leading dimension larger than the row.
  Tensor as = randn_f32({13, 15}, 24).slice(1, 2, 13);
  expect_matmul_matches(as, bt, 1e-5);
  // Batched with transposed last two dims on both sides.
  Tensor ab = randn_f32({3, 7, 5}, 25).transpose(1, 2);  // [3, 5, 7]
  Tensor bb = randn_f32({3, 4, 7}, 26).transpose(1, 2);  // [3, 7, 4]
  expect_matmul_matches(ab, bb, 1e-5);
  // Shared B with a transposed 3-D a (rows cannot be folded into one GEMM).
  expect_matmul_matches(ab, randn_f32({7, 2}, 27), 1e-5);
  // Leading dims that do not collapse to one batch stride (copied, still correct).
  Tensor a4 = randn_f32({3, 2, 5, 4}, 28).transpose(0, 1);  // [2, 3, 5, 4]
  Tensor b4 = randn_f32({2, 3, 4, 6}, 29);
  expect_matmul_matches(a4, b4, 1e-5);
  expect_matmul_matches(a4, randn_f32({4, 6}, 30), 1e-5);
}

TEST(Matmul, TransposedViewsReachBlasWithoutCopies) {
  // The only allocation of a forward over transposed / strided views is the output.
  Tensor at = randn_f32({11, 13}, 17).transpose(0, 1), bt = randn_f32({7, 11}, 18).transpose(0, 1);
  Tensor ab = randn_f32({3, 7, 5}, 19).transpose(1, 2), bb = randn_f32({3, 4, 7}, 20).transpose(1, 2);
  Tensor w = randn_f32({6, 11}, 21), xs = randn_f32({5, 20}, 22).slice(1, 2, 13);
  auto allocations = [] { return host_pool_stats().allocations; };
  size_t before = allocations();
  Tensor y1 = matmul(at, bt);
  EXPECT_EQ(allocations() - before, 1u);
  before = allocations();
  Tensor y2 = matmul(ab, bb);
  EXPECT_EQ(allocations() - before, 1u);
  before = allocations();
  Tensor y3 = linear(at, w);
  EXPECT_EQ(allocations() - before, 1u);
  before = allocations();
  Tensor y4 = linear(xs, w);
  EXPECT_EQ(allocations() - before, 1u);
}

TEST(Matmul, EmptyInnerDimGivesZeros) {
  Tensor y = matmul(Tensor::zeros({3, 0}), Tensor::zeros({0, 4}));
  EXPECT_EQ(y.shape(), (Shape{3, 4}));
  for (double v : y.to_double_vector()) EXPECT_EQ(v, 0.0);
  EXPECT_EQ(matmul(Tensor::zeros({0, 5}), Tensor::zeros({5, 4})).shape(), (Shape{0, 4}));
}

TEST(Matmul, GradcheckOddShapesF64) {
  Fn mm = [](const std::vector<Tensor>& x) { return matmul(x[0], x[1]); };
  EXPECT_GRADCHECK(mm, {randn_f64({13, 11}, 31), randn_f64({11, 7}, 32)}, 1e-6, 1e-7, 1e-5);
  EXPECT_GRADCHECK(mm, {randn_f64({5, 7, 3}, 33), randn_f64({3, 5}, 34)}, 1e-6, 1e-7, 1e-5);
  EXPECT_GRADCHECK(mm, {randn_f64({3, 5, 7}, 35), randn_f64({3, 7, 4}, 36)}, 1e-6, 1e-7, 1e-5);
  EXPECT_GRADCHECK(mm, {randn_f64({2, 3, 3, 5}, 37), randn_f64({2, 3, 5, 2}, 38)}, 1e-6, 1e-7, 1e-5);
  // Only one side requires grad.
  EXPECT_GRADCHECK(mm, {randn_f64({5, 7, 3}, 39), randn_f64({3, 5}, 40, 1.0, false)}, 1e-6, 1e-7, 1e-5);
}

TEST(Matmul, GradcheckTransposedViewInputsF64) {
  EXPECT_GRADCHECK([](const std::vector<Tensor>& x) { return matmul(x[0].transpose(0, 1), x[1].transpose(0, 1)); },
                   {randn_f64({11, 13}, 41), randn_f64({7, 11}, 42)}, 1e-6, 1e-7, 1e-5);
  EXPECT_GRADCHECK([](const std::vector<Tensor>& x) { return matmul(x[0].transpose(1, 2), x[1].transpose(1, 2)); },
                   {randn_f64({3, 7, 5}, 43), randn_f64({3, 4, 7}, 44)}, 1e-6, 1e-7, 1e-5);
  EXPECT_GRADCHECK([](const std::vector<Tensor>& x) { return matmul(x[0].transpose(1, 2), x[1]); },
                   {randn_f64({5, 3, 7}, 45), randn_f64({3, 2}, 46)}, 1e-6, 1e-7, 1e-5);
}

TEST(Matmul, ErrorsNameOpAndBothShapes) {
  try {
    matmul(Tensor::zeros({2, 3}), Tensor::zeros({4, 5}));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("matmul"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[2, 3]"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[4, 5]"), std::string::npos) << msg;
  }
  EXPECT_THROW(matmul(Tensor::zeros({2, 3, 4}), Tensor::zeros({3, 4, 5})), Error);  // batch mismatch
  EXPECT_THROW(matmul(Tensor::zeros({3}), Tensor::zeros({3, 4})), Error);
  EXPECT_THROW(matmul(Tensor::zeros({2, 3}), Tensor::zeros({3, 4}, DType::f64)), Error);
  try {
    linear(Tensor::zeros({2, 3}), Tensor::zeros({4, 5}));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("linear"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[2, 3]"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[4, 5]"), std::string::npos) << msg;
  }
  EXPECT_THROW(linear(Tensor::zeros({2, 3}), Tensor::zeros({4, 3}), Tensor::zeros({5})), Error);
}

TEST(Linear, ForwardMatchesNaiveWithAndWithoutBias) {
  Tensor x = randn_f32({2, 5, 7}, 51), w = randn_f32({4, 7}, 52), b = randn_f32({4}, 53);
  std::vector<double> want = naive_matmul(x, w.transpose(0, 1).contiguous());
  std::vector<double> vb = b.to_double_vector();
  Tensor y0 = linear(x, w);
  EXPECT_EQ(y0.shape(), (Shape{2, 5, 4}));
  expect_close(y0.to_double_vector(), want, 1e-5);
  for (size_t i = 0; i < want.size(); ++i) want[i] += vb[i % 4];
  expect_close(linear(x, w, b).to_double_vector(), want, 1e-5);
  // A 1-D input, a transposed input view and a transposed weight view.
  Tensor x1 = randn_f32({7}, 54);
  EXPECT_EQ(linear(x1, w, b).shape(), (Shape{4}));
  Tensor xt = randn_f32({7, 6}, 55).transpose(0, 1);
  Tensor wt = randn_f32({7, 4}, 56).transpose(0, 1);
  expect_close(linear(xt, wt).to_double_vector(), naive_matmul(xt, wt.transpose(0, 1)), 1e-5);
}

TEST(Linear, GradcheckF64) {
  Fn lin_b = [](const std::vector<Tensor>& v) { return linear(v[0], v[1], v[2]); };
  Fn lin = [](const std::vector<Tensor>& v) { return linear(v[0], v[1]); };
  EXPECT_GRADCHECK(lin_b, {randn_f64({3, 5, 7}, 61), randn_f64({4, 7}, 62), randn_f64({4}, 63)}, 1e-6, 1e-7, 1e-5);
  EXPECT_GRADCHECK(lin, {randn_f64({13, 11}, 64), randn_f64({5, 11}, 65)}, 1e-6, 1e-7, 1e-5);
  EXPECT_GRADCHECK([](const std::vector<Tensor>& v) { return linear(v[0].transpose(0, 1), v[1].transpose(0, 1), v[2]); },
                   {randn_f64({7, 6}, 66), randn_f64({7, 3}, 67), randn_f64({3}, 68)}, 1e-6, 1e-7, 1e-5);
  EXPECT_GRADCHECK(lin_b, {randn_f64({7}, 69), randn_f64({3, 7}, 70), randn_f64({3}, 71)}, 1e-6, 1e-7, 1e-5);
}
