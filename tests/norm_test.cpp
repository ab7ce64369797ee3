// rms_norm: values against a naive loop, unit RMS invariant, f64 gradient checks for x and
// weight (odd shapes, views, more rows than one reduction block), thread-count independence.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>

#include "core/ops.h"
#include "tests/gradcheck.h"

using namespace moe;
using test::randn_f32;
using test::randn_f64;

namespace {
using Fn = std::function<Tensor(const std::vector<Tensor>&)>;
}

TEST(RmsNorm, ForwardMatchesNaiveLoop) {
  Tensor x = randn_f32({5, 7, 13}, 1, 2.0), w = randn_f32({13}, 2);
  double eps = 1e-5;
  std::vector<double> vx = x.to_double_vector(), vw = w.to_double_vector();
  std::vector<double> y = rms_norm(x, w, eps).to_double_vector();
  EXPECT_EQ(rms_norm(x, w).shape(), x.shape());
  for (int64_t r = 0; r < 35; ++r) {
    double ss = 0;
    for (int64_t j = 0; j < 13; ++j) ss += vx[size_t(r * 13 + j)] * vx[size_t(r * 13 + j)];
    double inv = 1.0 / std::sqrt(ss / 13 + eps);
    for (int64_t j = 0; j < 13; ++j) {
      size_t i = size_t(r * 13 + j);
      EXPECT_NEAR(y[i], vx[i] * inv * vw[size_t(j)], 1e-5 * (1 + std::abs(y[i])));
    }
  }
}

TEST(RmsNorm, UnitWeightGivesUnitRms) {
  Tensor x = randn_f64({9, 21}, 3, 5.0, false);
  std::vector<double> y = rms_norm(x, Tensor::ones({21}, DType::f64), 0.0).to_double_vector();
  for (int64_t r = 0; r < 9; ++r) {
    double ss = 0;
    for (int64_t j = 0; j < 21; ++j) ss += y[size_t(r * 21 + j)] * y[size_t(r * 21 + j)];
    EXPECT_NEAR(ss / 21, 1.0, 1e-12);
  }
}

TEST(RmsNorm, GradcheckF64) {
  Fn f = [](const std::vector<Tensor>& v) { return rms_norm(v[0], v[1], 1e-5); };
  EXPECT_GRADCHECK(f, {randn_f64({5, 7, 3}, 11), randn_f64({3}, 12)}, 1e-6, 1e-7, 1e-5);
  EXPECT_GRADCHECK(f, {randn_f64({13, 11}, 13), randn_f64({11}, 14)}, 1e-6, 1e-7, 1e-5);
  // More rows than one weight-grad block (64), so several partials are summed.
  EXPECT_GRADCHECK(f, {randn_f64({150, 5}, 15), randn_f64({5}, 16)}, 1e-6, 1e-7, 1e-5);
  // Transposed input view; weight without grad.
  EXPECT_GRADCHECK([](const std::vector<Tensor>& v) { return rms_norm(v[0].transpose(0, 1), v[1], 1e-3); },
                   {randn_f64({7, 9}, 17), randn_f64({7}, 18, 1.0, false)}, 1e-6, 1e-7, 1e-5);
}

TEST(RmsNorm, BackwardBitsIndependentOfThreadCount) {
  Tensor x = randn_f32({300, 129}, 21), w = randn_f32({129}, 22), probe = randn_f32({300, 129}, 23);
  auto grads = [&](int threads) {
    int prev = omp_get_max_threads();
    omp_set_num_threads(threads);
    Tensor xg = x.clone(), wg = w.clone();
    xg.set_requires_grad(true);
    wg.set_requires_grad(true);
    sum_all(mul(rms_norm(xg, wg), probe)).backward();
    omp_set_num_threads(prev);
    return std::make_pair(xg.grad().to_vector<float>(), wg.grad().to_vector<float>());
  };
  auto one = grads(1), two = grads(2);
  EXPECT_EQ(one.first, two.first);
  EXPECT_EQ(one.second, two.second);
}

TEST(RmsNorm, WeightShapeErrorNamesBothShapes) {
  try {
    rms_norm(Tensor::zeros({4, 6}), Tensor::zeros({5}));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("rms_norm"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[4, 6]"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[5]"), std::string::npos) << msg;
  }
}
