// Router: fused gate + score gradients (softmax, sigmoid, with jitter), z-loss value and
// gradient, jitter only in training and reproducible from its Philox stream.
#include <gtest/gtest.h>

#include <cmath>

#include "core/ops.h"
#include "layers/moe/router.h"
#include "tests/gradcheck.h"

using namespace moe;
using test::randn_f64;

TEST(MoeRouter, LogitsAndScoresMatchHandComputed) {
  Tensor x = Tensor::from_vector<double>({1, 2, -1, 0.5, 0, 3}, {2, 3});
  Tensor w = Tensor::from_vector<double>({1, 0, 0, 0, 1, 0}, {2, 3});  // logits = first two columns of x
  auto [l, s] = router_logits_scores(x, w, ScoreFunction::softmax);
  EXPECT_EQ(l.to_vector<double>(), (std::vector<double>{1, 2, 0.5, 0}));
  std::vector<double> sv = s.to_vector<double>();
  EXPECT_NEAR(sv[0], 1 / (1 + std::exp(1.0)), 1e-15);
  EXPECT_NEAR(sv[3], 1 / (1 + std::exp(0.5)), 1e-15);
  auto [l2, s2] = router_logits_scores(x, w, ScoreFunction::sigmoid);
  EXPECT_NEAR(s2.to_vector<double>()[2], 1 / (1 + std::exp(-0.5)), 1e-15);
}

TEST(MoeRouter, GradcheckSoftmaxSigmoidAndJitter) {
  // Odd shapes: T = 7 tokens, D = 5, E_r = 3.
  Tensor x = randn_f64({7, 5}, 1), w = randn_f64({3, 5}, 2);
  Tensor jit = add_scalar(mul_scalar(randn_f64({7, 5}, 3, 1.0, false), 0.05), 1.0);
  for (ScoreFunction fn : {ScoreFunction::softmax, ScoreFunction::sigmoid}) {
    // Both outputs at once: logits and scores enter the projected loss.
    auto both = [fn](const std::vector<Tensor>& v) {
      auto [l, s] = router_logits_scores(v[0], v[1], fn);
      return add(mul_scalar(l, 0.3), s);
    };
    EXPECT_GRADCHECK(both, {x, w}, 1e-6, 1e-8, 1e-6);
    auto jittered = [fn, jit](const std::vector<Tensor>& v) {
      return router_logits_scores(v[0], v[1], fn, jit).second;
    };
    EXPECT_GRADCHECK(jittered, {x, w}, 1e-6, 1e-8, 1e-6);
  }
}

TEST(MoeRouter, ZLossValueAndGradcheck) {
  Tensor logits = Tensor::from_vector<double>({0, 0, std::log(3.0), 1, 1, 1}, {2, 3});
  // Row 0: lse = log(1 + 1 + 3) = log 5; row 1: lse = 1 + log 3.
  double expect = (std::pow(std::log(5.0), 2) + std::pow(1 + std::log(3.0), 2)) / 2;
  EXPECT_NEAR(router_z_loss(logits).item<double>(), expect, 1e-14);
  // Stable for large logits (a naive exp would overflow).
  Tensor big = Tensor::from_vector<double>({800, 799}, {1, 2});
  double lse = 800 + std::log1p(std::exp(-1.0));
  EXPECT_NEAR(router_z_loss(big).item<double>(), lse * lse, 1e-9);
  EXPECT_GRADCHECK([](const std::vector<Tensor>& v) { return router_z_loss(v[0]); }, {randn_f64({9, 5}, 4, 2.0)}, 1e-6,
                   1e-8, 1e-6);
  // Through the router: z-loss of the gate's logits, gradient to x and W_r.
  EXPECT_GRADCHECK(
      [](const std::vector<Tensor>& v) {
        return router_z_loss(router_logits_scores(v[0], v[1], ScoreFunction::softmax).first);
      },
      {randn_f64({6, 5}, 5), randn_f64({3, 5}, 6)}, 1e-6, 1e-8, 1e-6);
}

TEST(MoeRouter, JitterOnlyInTrainingAndReproducible) {
  Philox init(7, 1);
  Router r(5, 4, ScoreFunction::softmax, 0.1, 0.5, init, DType::f32);
  Tensor x = test::randn_f32({6, 5}, 8);
  Philox j1(1, 3), j2(1, 3);
  RouterOutput a = r.forward(x, 4, 2, 6, j1);
  RouterOutput b = r.forward(x, 4, 2, 6, j2);
  EXPECT_EQ(a.logits.to_vector<float>(), b.logits.to_vector<float>());  // same stream, same draws
  EXPECT_EQ(j1.offset(), j2.offset());
  EXPECT_GT(j1.offset(), 0u);
  r.eval();
  uint64_t before = j1.offset();
  RouterOutput c = r.forward(x, 4, 2, 6, j1);
  EXPECT_EQ(j1.offset(), before);  // eval draws nothing
  EXPECT_FALSE(c.training);
  // Jitter perturbs the logits by at most eps * |x| |w| per term, and does perturb them.
  auto va = a.logits.to_vector<float>(), vc = c.logits.to_vector<float>();
  double maxdiff = 0;
  for (size_t i = 0; i < va.size(); ++i) maxdiff = std::max(maxdiff, double(std::abs(va[i] - vc[i])));
  EXPECT_GT(maxdiff, 1e-4);
  EXPECT_LT(maxdiff, 0.1 * 5 * 4 * 1.5);
  EXPECT_EQ(a.logits.dtype(), DType::f32);
}

TEST(MoeRouter, BadScoreFunctionNamesTheKey) {
  try {
    parse_score_function("tanh");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("router.score"), std::string::npos) << e.what();
  }
}
