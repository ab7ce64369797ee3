// sigmoid, silu, swiglu: values against the textbook formulas, extreme inputs stay finite,
// f64 gradient checks on odd shapes and on non-contiguous views.
#include <gtest/gtest.h>

#include <cmath>

#include "core/ops.h"
#include "tests/gradcheck.h"

using namespace moe;
using test::randn_f32;
using test::randn_f64;

namespace {
using Fn = std::function<Tensor(const std::vector<Tensor>&)>;
double ref_sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
}  // namespace

TEST(Activation, ForwardValuesMatchFormulas) {
  Tensor x = randn_f32({5, 7, 3}, 1, 3.0), u = randn_f32({5, 7, 3}, 2);
  std::vector<double> vx = x.to_double_vector(), vu = u.to_double_vector();
  std::vector<double> s = sigmoid(x).to_double_vector(), si = silu(x).to_double_vector(),
                      sw = swiglu(x, u).to_double_vector();
  EXPECT_EQ(swiglu(x, u).shape(), (Shape{5, 7, 3}));
  for (size_t i = 0; i < vx.size(); ++i) {
    double sg = ref_sigmoid(vx[i]);
    EXPECT_NEAR(s[i], sg, 1e-6);
    EXPECT_NEAR(si[i], vx[i] * sg, 1e-5 * (1 + std::abs(vx[i])));
    EXPECT_NEAR(sw[i], vx[i] * sg * vu[i], 1e-5 * (1 + std::abs(vx[i] * vu[i])));
  }
  // Known points: sigmoid(0) = 1/2, silu(0) = 0, silu(1) = 1 / (1 + e^-1).
  Tensor p = Tensor::from_vector<double>({0.0, 1.0}, {2});
  EXPECT_DOUBLE_EQ(sigmoid(p).to_vector<double>()[0], 0.5);
  EXPECT_DOUBLE_EQ(silu(p).to_vector<double>()[1], 1.0 / (1.0 + std::exp(-1.0)));
}

TEST(Activation, ExtremeInputsStayFinite) {
  Tensor x = Tensor::from_vector<float>({-1e4f, -100.f, -80.f, 80.f, 100.f, 1e4f}, {6});
  std::vector<float> s = sigmoid(x).to_vector<float>(), si = silu(x).to_vector<float>();
  for (size_t i = 0; i < s.size(); ++i) {
    EXPECT_TRUE(std::isfinite(s[i]) && s[i] >= 0 && s[i] <= 1) << i << ": " << s[i];
    EXPECT_TRUE(std::isfinite(si[i])) << i << ": " << si[i];
  }
  EXPECT_EQ(s[0], 0.0f);
  EXPECT_EQ(s[5], 1.0f);
  EXPECT_EQ(si[5], 1e4f);
  // Gradients at the extremes are finite too (0 on the far negative side).
  Tensor xg = x.to(DType::f64);
  xg.set_requires_grad(true);
  sum_all(silu(xg)).backward();
  for (double g : xg.grad().to_double_vector()) EXPECT_TRUE(std::isfinite(g));
  EXPECT_NEAR(xg.grad().to_double_vector()[0], 0.0, 1e-12);
  EXPECT_NEAR(xg.grad().to_double_vector()[5], 1.0, 1e-12);
}

TEST(Activation, GradcheckF64OddShapes) {
  Tensor x = randn_f64({5, 7, 3}, 11, 2.0), u = randn_f64({5, 7, 3}, 12);
  EXPECT_GRADCHECK([](const std::vector<Tensor>& v) { return sigmoid(v[0]); }, {x}, 1e-6, 1e-8, 1e-5);
  EXPECT_GRADCHECK([](const std::vector<Tensor>& v) { return silu(v[0]); }, {x}, 1e-6, 1e-8, 1e-5);
  EXPECT_GRADCHECK([](const std::vector<Tensor>& v) { return swiglu(v[0], v[1]); }, {x, u}, 1e-6, 1e-8, 1e-5);
  // Non-contiguous views (transposed) and one side without grad.
  Tensor a = randn_f64({13, 11}, 13, 2.0), b = randn_f64({11, 13}, 14);
  EXPECT_GRADCHECK([](const std::vector<Tensor>& v) { return swiglu(v[0].transpose(0, 1), v[1]); }, {a, b}, 1e-6,
                   1e-8, 1e-5);
  EXPECT_GRADCHECK([](const std::vector<Tensor>& v) { return swiglu(v[0], v[1]); },
                   {randn_f64({13, 11}, 15), randn_f64({13, 11}, 16, 1.0, false)}, 1e-6, 1e-8, 1e-5);
  EXPECT_GRADCHECK([](const std::vector<Tensor>& v) { return silu(v[0].transpose(0, 1)); }, {a}, 1e-6, 1e-8, 1e-5);
}

TEST(Activation, SwigluShapeMismatchNamesBothShapes) {
  try {
    swiglu(Tensor::zeros({2, 3}), Tensor::zeros({3, 2}));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("swiglu"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[2, 3]"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[3, 2]"), std::string::npos) << msg;
  }
  EXPECT_THROW(sigmoid(Tensor::zeros({2}, DType::i64)), Error);
}
