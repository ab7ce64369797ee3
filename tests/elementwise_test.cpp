// Element-wise ops and reductions: gradient checks in f64 on odd, broadcast shapes.
#include <gtest/gtest.h>

#include "core/ops.h"
#include "tests/gradcheck.h"

using namespace moe;
using test::randn_f64;

TEST(Elementwise, BinaryOpsBroadcastForwardValues) {
  Tensor a = Tensor::from_vector<float>({1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor b = Tensor::from_vector<float>({10, 20, 30}, {3});
  EXPECT_EQ(add(a, b).to_vector<float>(), (std::vector<float>{11, 22, 33, 14, 25, 36}));
  Tensor c = Tensor::from_vector<float>({2, 4}, {2, 1});
  EXPECT_EQ(div(a, c).to_vector<float>(), (std::vector<float>{0.5f, 1, 1.5f, 1, 1.25f, 1.5f}));
  EXPECT_EQ(sub(b, a).shape(), (Shape{2, 3}));
}

TEST(Elementwise, GradcheckBinaryWithBroadcasting) {
  // Shapes that are not multiples of the vector width, broadcast on both sides.
  Tensor a = randn_f64({5, 1, 7}, 11), b = randn_f64({3, 7}, 12), c = randn_f64({1}, 13);
  Tensor pos = add_scalar(square(randn_f64({3, 7}, 14, 1.0, false)), 0.5);
  pos.set_requires_grad(true);
  EXPECT_GRADCHECK([](const std::vector<Tensor>& x) { return add(x[0], x[1]); }, {a, b});
  EXPECT_GRADCHECK([](const std::vector<Tensor>& x) { return sub(x[0], x[1]); }, {a, b});
  EXPECT_GRADCHECK([](const std::vector<Tensor>& x) { return mul(x[0], x[1]); }, {a, b});
  EXPECT_GRADCHECK([](const std::vector<Tensor>& x) { return div(x[0], x[1]); }, {a, pos});
  EXPECT_GRADCHECK([](const std::vector<Tensor>& x) { return mul(x[0], x[1]); }, {b, c});
  EXPECT_GRADCHECK([](const std::vector<Tensor>& x) { return mul(x[0], x[0]); }, {b});
}

TEST(Elementwise, GradcheckUnary) {
  Tensor x = randn_f64({4, 9}, 21);
  Tensor pos = add_scalar(square(randn_f64({4, 9}, 22, 1.0, false)), 0.3);
  pos.set_requires_grad(true);
  EXPECT_GRADCHECK([](const std::vector<Tensor>& v) { return exp(v[0]); }, {x});
  EXPECT_GRADCHECK([](const std::vector<Tensor>& v) { return square(v[0]); }, {x});
  EXPECT_GRADCHECK([](const std::vector<Tensor>& v) { return neg(add_scalar(mul_scalar(v[0], 3.0), 1.0)); }, {x});
  EXPECT_GRADCHECK([](const std::vector<Tensor>& v) { return log(v[0]); }, {pos});
  EXPECT_GRADCHECK([](const std::vector<Tensor>& v) { return sqrt(v[0]); }, {pos});
}

TEST(Reduce, SumsMatchHandComputedAndGradcheck) {
  Tensor a = Tensor::arange(24, DType::f64).reshape({2, 3, 4});
  EXPECT_EQ(sum(a, {1}).to_vector<double>(), (std::vector<double>{12, 15, 18, 21, 48, 51, 54, 57}));
  EXPECT_EQ(sum(a, {0, 2}, true).shape(), (Shape{1, 3, 1}));
  EXPECT_EQ(sum(a, {0, 2}).to_vector<double>(), (std::vector<double>{60, 92, 124}));
  EXPECT_DOUBLE_EQ(sum_all(a).item<double>(), 276);
  EXPECT_DOUBLE_EQ(mean_all(a).item<double>(), 11.5);
  EXPECT_EQ(amax(a, 1).to_vector<double>(), (std::vector<double>{8, 9, 10, 11, 20, 21, 22, 23}));
  Tensor x = randn_f64({3, 5, 7}, 31);
  EXPECT_GRADCHECK([](const std::vector<Tensor>& v) { return sum(v[0], {1}); }, {x});
  EXPECT_GRADCHECK([](const std::vector<Tensor>& v) { return sum(v[0], {0, 2}, true); }, {x});
  EXPECT_GRADCHECK([](const std::vector<Tensor>& v) { return mean(v[0], {-1}); }, {x});
  EXPECT_GRADCHECK([](const std::vector<Tensor>& v) { return mean_all(v[0]); }, {x});
  EXPECT_GRADCHECK([](const std::vector<Tensor>& v) { return sum_to(v[0], {5, 1}); }, {x});
}
