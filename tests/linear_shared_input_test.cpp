// linear_shared_input (attention's fused q, k, v projections): values and grads equal to separate
// linear calls, f64 gradient check on odd shapes, a weight without grad, errors.
#include <gtest/gtest.h>

#include "core/ops.h"
#include "tests/gradcheck.h"

using namespace moe;
using test::randn_f64;

namespace {

void expect_close(const Tensor& got, const Tensor& ref, double tol, const char* what) {
  auto g = got.to_double_vector(), r = ref.to_double_vector();
  ASSERT_EQ(g.size(), r.size()) << what;
  for (size_t i = 0; i < r.size(); ++i) ASSERT_NEAR(g[i], r[i], tol * (1 + std::abs(r[i]))) << what << " at " << i;
}

}  // namespace

TEST(LinearSharedInput, MatchesSeparateLinears) {
  // [3, 101, 37] input (303 rows: large enough for the two-thread backward), weights of 41, 41, 23 rows.
  for (DType dt : {DType::f64, DType::f32}) {
    auto make = [&](const Shape& s, uint64_t seed) { return randn_f64(s, seed, 0.3).to(dt).detach().set_requires_grad(true); };
    Tensor x = make({3, 101, 37}, 1);
    std::vector<Tensor> w{make({41, 37}, 2), make({41, 37}, 3), make({23, 37}, 4)};
    std::vector<Tensor> seeds{randn_f64({3, 101, 41}, 5, 1.0, false).to(dt), randn_f64({3, 101, 41}, 6, 1.0, false).to(dt),
                              randn_f64({3, 101, 23}, 7, 1.0, false).to(dt)};
    std::vector<Tensor> ys = linear_shared_input(x, w);
    ASSERT_EQ(ys.size(), 3u);
    Tensor total = sum(mul(ys[0], seeds[0]), {0, 1, 2});
    for (int i = 1; i < 3; ++i) total = add(total, sum(mul(ys[i], seeds[i]), {0, 1, 2}));
    total.backward();
    Tensor x2 = x.detach().clone().set_requires_grad(true);
    std::vector<Tensor> w2;
    for (const Tensor& t : w) w2.push_back(t.detach().clone().set_requires_grad(true));
    Tensor ref_total = sum(mul(linear(x2, w2[0]), seeds[0]), {0, 1, 2});
    for (int i = 1; i < 3; ++i) ref_total = add(ref_total, sum(mul(linear(x2, w2[i]), seeds[i]), {0, 1, 2}));
    ref_total.backward();
    const double tol = dt == DType::f64 ? 1e-12 : 1e-5;
    for (int i = 0; i < 3; ++i) {
      EXPECT_EQ(ys[i].shape(), (Shape{3, 101, w[i].shape()[0]}));
      expect_close(ys[i], linear(x2.detach(), w2[i].detach()), tol, "y");
      expect_close(w[i].grad(), w2[i].grad(), tol, "dw");
    }
    expect_close(x.grad(), x2.grad(), tol, "dx");
  }
}

TEST(LinearSharedInput, GradcheckF64) {
  EXPECT_GRADCHECK(
      [](const std::vector<Tensor>& v) {
        std::vector<Tensor> ys = linear_shared_input(v[0], {v[1], v[2]});
        return add(sum(ys[0], {1}, false), mul_scalar(sum(ys[1], {1}, false), 0.5));
      },
      {randn_f64({7, 5}, 11), randn_f64({3, 5}, 12), randn_f64({3, 5}, 13)});
  // Only some grads wanted: a weight that does not require grad gets none, the others are right.
  Tensor x = randn_f64({6, 4}, 14), w0 = randn_f64({3, 4}, 15, 1.0, false), w1 = randn_f64({2, 4}, 16);
  std::vector<Tensor> ys = linear_shared_input(x, {w0, w1});
  add(sum(ys[0], {0, 1}), sum(ys[1], {0, 1})).backward();
  EXPECT_FALSE(w0.grad().defined());
  // dL/dw1[j] = sum over rows of x, for both rows j of w1.
  std::vector<double> col = sum(x.detach(), {0}, false).to_double_vector(), g1 = w1.grad().to_double_vector();
  ASSERT_EQ(g1.size(), 8u);
  for (size_t i = 0; i < 8; ++i) EXPECT_NEAR(g1[i], col[i % 4], 1e-12) << i;
}

TEST(LinearSharedInput, ErrorsNameOpAndShapes) {
  try {
    linear_shared_input(Tensor::zeros({4, 3}), {Tensor::zeros({2, 3}), Tensor::zeros({2, 5})});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("linear_shared_input: cannot apply weight [2, 5] (expected [out, 3]) to input [4, 3]"),
              std::string::npos)
        << e.what();
  }
  EXPECT_THROW(linear_shared_input(Tensor::zeros({4, 3}), {}), Error);
}
