// cross_entropy: the mean NLL against a naive loop, ignore_index, all-ignored, extreme logits,
// f64 gradient checks, and the error for an out-of-range target.
#include <gtest/gtest.h>

#include <cmath>

#include "core/ops.h"
#include "tests/gradcheck.h"

using namespace moe;
using test::randn_f32;
using test::randn_f64;

namespace {

double naive_ce(const Tensor& logits, const std::vector<int64_t>& t, int64_t ignore) {
  std::vector<double> x = logits.to_double_vector();
  int64_t v = logits.size(1);
  long double total = 0;
  int count = 0;
  for (size_t r = 0; r < t.size(); ++r) {
    if (t[r] == ignore) continue;
    long double m = -INFINITY, s = 0;
    for (int64_t k = 0; k < v; ++k) m = std::max<long double>(m, x[r * size_t(v) + size_t(k)]);
    for (int64_t k = 0; k < v; ++k) s += std::exp((long double)x[r * size_t(v) + size_t(k)] - m);
    total += m + std::log(s) - x[r * size_t(v) + size_t(t[r])];
    ++count;
  }
  return count ? double(total / count) : 0.0;
}

}  // namespace

TEST(CrossEntropy, MatchesNaiveMeanWithIgnoredRows) {
  Tensor logits = randn_f64({13, 11}, 1, 3.0, false);
  std::vector<int64_t> t = {0, 10, kIgnoreIndex, 5, 3, 3, kIgnoreIndex, 1, 2, 9, 7, 8, 6};
  Tensor tt = Tensor::from_vector<int64_t>(t, {13});
  Tensor loss = cross_entropy(logits, tt);
  EXPECT_EQ(loss.dim(), 0);
  EXPECT_NEAR(loss.item<double>(), naive_ce(logits, t, kIgnoreIndex), 1e-12);
  // i32 targets, f32 logits, a custom ignore_index.
  std::vector<int32_t> t32 = {0, 10, 4, 5, 3, 3, -1, 1, 2, 9, 7, 8, 6};
  std::vector<int64_t> t64(t32.begin(), t32.end());
  Tensor lf = logits.to(DType::f32);
  EXPECT_NEAR(cross_entropy(lf, Tensor::from_vector<int32_t>(t32, {13}), -1).item<float>(), naive_ce(lf, t64, -1),
              1e-5);
}

TEST(CrossEntropy, GradIsSoftmaxMinusOnehotOverCount) {
  Tensor logits = randn_f64({5, 7}, 2, 1.0, true);
  std::vector<int64_t> t = {3, kIgnoreIndex, 0, 6, 6};
  cross_entropy(logits, Tensor::from_vector<int64_t>(t, {5})).backward();
  std::vector<double> g = logits.grad().to_double_vector(), p = softmax(logits.detach()).to_double_vector();
  for (int r = 0; r < 5; ++r) {
    double row_sum = 0;
    for (int k = 0; k < 7; ++k) {
      double want = t[size_t(r)] == kIgnoreIndex ? 0.0 : (p[size_t(r * 7 + k)] - (k == t[size_t(r)])) / 4.0;
      EXPECT_NEAR(g[size_t(r * 7 + k)], want, 1e-14);
      row_sum += g[size_t(r * 7 + k)];
    }
    EXPECT_NEAR(row_sum, 0.0, 1e-14);
  }
}

TEST(CrossEntropy, AllIgnoredGivesZeroLossAndZeroGrad) {
  Tensor logits = randn_f32({4, 9}, 3, 1.0, true);
  Tensor t = Tensor::full({4}, double(kIgnoreIndex), DType::i64);
  Tensor loss = cross_entropy(logits, t);
  EXPECT_EQ(loss.item<float>(), 0.0f);
  loss.backward();
  for (float v : logits.grad().to_vector<float>()) EXPECT_EQ(v, 0.0f);
}

TEST(CrossEntropy, ExtremeLogitsGiveFiniteLossAndGrad) {
  Tensor logits = Tensor::from_vector<float>({80, -80, 0, 1e4f, -1e4f, 0, -80, -80, -80}, {3, 3});
  logits.set_requires_grad(true);
  Tensor t = Tensor::from_vector<int64_t>({1, 1, 2}, {3});
  Tensor loss = cross_entropy(logits, t);
  // Row 0: 160 (to within e^-160), row 1: 2e4, row 2: log 3.
  double want = (160.0 + 2e4 + std::log(3.0)) / 3;
  EXPECT_TRUE(std::isfinite(loss.item<float>()));
  EXPECT_NEAR(loss.item<float>(), want, 1e-2);
  loss.backward();
  for (float v : logits.grad().to_vector<float>()) EXPECT_TRUE(std::isfinite(v)) << v;
  EXPECT_NEAR(logits.grad().to_vector<float>()[4], -1.0f / 3, 1e-6);
}

TEST(CrossEntropy, GradcheckF64) {
  Tensor t = Tensor::from_vector<int64_t>({0, 10, kIgnoreIndex, 5, 3, 3, 1, 2, 9, 7, 8, 6, 4}, {13});
  EXPECT_GRADCHECK([t](const std::vector<Tensor>& v) { return cross_entropy(v[0], t); }, {randn_f64({13, 11}, 11, 2.0)},
                   1e-6, 1e-9, 1e-5);
  Tensor t2 = Tensor::from_vector<int32_t>({2, 0, 4}, {3});
  EXPECT_GRADCHECK([t2](const std::vector<Tensor>& v) { return cross_entropy(v[0].transpose(0, 1), t2); },
                   {randn_f64({5, 3}, 12)}, 1e-6, 1e-9, 1e-5);
}

TEST(CrossEntropy, OutOfRangeTargetNamesRowAndValue) {
  Tensor logits = Tensor::zeros({4, 10});
  try {
    cross_entropy(logits, Tensor::from_vector<int64_t>({1, 2, 12, 3}, {4}));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("cross_entropy"), std::string::npos) << msg;
    EXPECT_NE(msg.find("target 12"), std::string::npos) << msg;
    EXPECT_NE(msg.find("row 2"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[4, 10]"), std::string::npos) << msg;
  }
  EXPECT_THROW(cross_entropy(logits, Tensor::from_vector<int64_t>({1, 2, -1, 3}, {4})), Error);
  EXPECT_THROW(cross_entropy(logits, Tensor::from_vector<int64_t>({1, 2, 3}, {3})), Error);
  EXPECT_THROW(cross_entropy(logits, Tensor::zeros({4})), Error);  // float targets
}
