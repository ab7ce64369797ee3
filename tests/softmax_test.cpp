// softmax, log_softmax, logsumexp: values against a naive loop along every dim, extreme
// logits stay finite, f64 gradient checks on odd shapes and views.
#include <gtest/gtest.h>

#include <cmath>

#include "core/ops.h"
#include "tests/gradcheck.h"

using namespace moe;
using test::randn_f32;
using test::randn_f64;

namespace {

using Fn = std::function<Tensor(const std::vector<Tensor>&)>;

// Naive logsumexp along `dim` of a contiguous [outer, n, inner] view, in long double.
std::vector<double> naive_lse(const Tensor& x, int64_t dim) {
  std::vector<double> v = x.to_double_vector();
  int64_t outer = 1, inner = 1, n = x.shape()[size_t(dim)];
  for (int64_t d = 0; d < dim; ++d) outer *= x.shape()[size_t(d)];
  for (int64_t d = dim + 1; d < x.dim(); ++d) inner *= x.shape()[size_t(d)];
  std::vector<double> out;
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t i = 0; i < inner; ++i) {
      long double s = 0;
      for (int64_t k = 0; k < n; ++k) s += std::exp((long double)v[size_t((o * n + k) * inner + i)]);
      out.push_back(double(std::log(s)));
    }
  return out;
}

}  // namespace

TEST(Softmax, ForwardMatchesNaiveAlongEveryDim) {
  Tensor x = randn_f64({5, 7, 3}, 1, 2.0, false);
  std::vector<double> v = x.to_double_vector();
  for (int64_t dim = 0; dim < 3; ++dim) {
    std::vector<double> lse = naive_lse(x, dim);
    std::vector<double> got_lse = logsumexp(x, dim).to_double_vector();
    Shape reduced = x.shape();
    reduced.erase(reduced.begin() + dim);
    EXPECT_EQ(logsumexp(x, dim).shape(), reduced);
    for (size_t i = 0; i < lse.size(); ++i) EXPECT_NEAR(got_lse[i], lse[i], 1e-12);
    std::vector<double> sm = softmax(x, dim).to_double_vector(), lsm = log_softmax(x, dim).to_double_vector();
    int64_t inner = 1, n = x.shape()[size_t(dim)];
    for (int64_t d = dim + 1; d < 3; ++d) inner *= x.shape()[size_t(d)];
    for (size_t idx = 0; idx < v.size(); ++idx) {
      int64_t o = int64_t(idx) / (n * inner), i = int64_t(idx) % inner;
      double want = v[idx] - lse[size_t(o * inner + i)];
      EXPECT_NEAR(lsm[idx], want, 1e-12);
      EXPECT_NEAR(sm[idx], std::exp(want), 1e-12);
    }
  }
  // f32 against the f64 result, and negative dims.
  Tensor xf = x.to(DType::f32);
  std::vector<double> s32 = softmax(xf, -2).to_double_vector(), s64 = softmax(x, 1).to_double_vector();
  for (size_t i = 0; i < s32.size(); ++i) EXPECT_NEAR(s32[i], s64[i], 1e-6);
}

TEST(Softmax, RowsSumToOne) {
  Tensor x = randn_f32({13, 11}, 2, 4.0);
  std::vector<float> s = softmax(x).to_vector<float>();
  for (int r = 0; r < 13; ++r) {
    double sum = 0;
    for (int k = 0; k < 11; ++k) {
      EXPECT_GE(s[size_t(r * 11 + k)], 0.0f);
      sum += s[size_t(r * 11 + k)];
    }
    EXPECT_NEAR(sum, 1.0, 1e-6);
  }
}

TEST(Softmax, ExtremeLogitsStayFinite) {
  Tensor x = Tensor::from_vector<float>({80, -80, 0, 1e4f, 1e4f, -1e4f, -80, -80, -80}, {3, 3});
  std::vector<float> s = softmax(x).to_vector<float>(), ls = log_softmax(x).to_vector<float>(),
                     lse = logsumexp(x).to_vector<float>();
  for (float v : s) EXPECT_TRUE(std::isfinite(v));
  for (float v : ls) EXPECT_TRUE(std::isfinite(v));
  for (float v : lse) EXPECT_TRUE(std::isfinite(v));
  EXPECT_NEAR(s[0], 1.0f, 1e-6);
  EXPECT_NEAR(s[3], 0.5f, 1e-6);
  EXPECT_NEAR(s[5], 0.0f, 1e-6);
  EXPECT_NEAR(lse[1], 1e4 + std::log(2.0), 1e-2);
  EXPECT_NEAR(ls[5], -2e4 - std::log(2.0), 1e-1);
  EXPECT_NEAR(lse[2], -80 + std::log(3.0), 1e-4);
  EXPECT_NEAR(s[6], 1.0f / 3, 1e-6);
  // Along a non-last dim too.
  std::vector<float> s0 = softmax(x, 0).to_vector<float>();
  for (float v : s0) EXPECT_TRUE(std::isfinite(v));
  // A row of -inf: logsumexp is -inf (not NaN).
  float ninf = -std::numeric_limits<float>::infinity();
  EXPECT_EQ(logsumexp(Tensor::from_vector<float>({ninf, ninf}, {2})).item<float>(), ninf);
}

TEST(Softmax, GradcheckF64EveryDim) {
  Tensor x = randn_f64({5, 7, 3}, 11, 2.0);
  for (int64_t dim : {0, 1, 2, -1}) {
    EXPECT_GRADCHECK([dim](const std::vector<Tensor>& v) { return softmax(v[0], dim); }, {x}, 1e-6, 1e-8, 1e-5);
    EXPECT_GRADCHECK([dim](const std::vector<Tensor>& v) { return log_softmax(v[0], dim); }, {x}, 1e-6, 1e-8, 1e-5);
    EXPECT_GRADCHECK([dim](const std::vector<Tensor>& v) { return logsumexp(v[0], dim); }, {x}, 1e-6, 1e-8, 1e-5);
  }
  Tensor y = randn_f64({11, 13}, 12, 3.0);
  EXPECT_GRADCHECK([](const std::vector<Tensor>& v) { return softmax(v[0].transpose(0, 1), -1); }, {y}, 1e-6, 1e-8,
                   1e-5);
  EXPECT_GRADCHECK([](const std::vector<Tensor>& v) { return log_softmax(v[0].transpose(0, 1), 0); }, {y}, 1e-6,
                   1e-8, 1e-5);
}

TEST(Softmax, BadDimNamesOp) {
  try {
    softmax(Tensor::zeros({2, 3}), 2);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("softmax"), std::string::npos) << e.what();
  }
  EXPECT_THROW(logsumexp(Tensor::zeros({2, 3}, DType::i32)), Error);
}
