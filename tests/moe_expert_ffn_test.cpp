// expert_swiglu_ffn (the fused per-expert SwiGLU FFN) against the unfused composition of
// grouped_matmul and swiglu, its f64 gradients with an empty expert, and run-to-run determinism.
#include <gtest/gtest.h>

#include "core/ops.h"
#include "layers/moe/experts.h"
#include "tests/gradcheck.h"

using namespace moe;
using test::randn_f64;

namespace {

Tensor unfused(const Tensor& x, const Tensor& w1, const Tensor& w3, const Tensor& w2, const std::vector<int64_t>& off) {
  return grouped_matmul(swiglu(grouped_matmul(x, w1, off), grouped_matmul(x, w3, off)), w2, off);
}

void expect_close(const Tensor& got, const Tensor& ref, double tol, const char* what) {
  auto g = got.to_double_vector(), r = ref.to_double_vector();
  ASSERT_EQ(g.size(), r.size()) << what;
  for (size_t i = 0; i < r.size(); ++i) ASSERT_NEAR(g[i], r[i], tol * (1 + std::abs(r[i]))) << what << " at " << i;
}

}  // namespace

TEST(MoeExpertFfn, MatchesUnfusedCompositionWithGrads) {
  // Large enough (about 2M multiply-adds) that experts run in parallel when OpenMP has threads;
  // expert 2 is empty, the segments are skewed.
  const int64_t N = 301, D = 37, H = 53, E = 5;
  const std::vector<int64_t> off{0, 150, 190, 190, 260, 301};
  for (DType dt : {DType::f64, DType::f32}) {
    auto make = [&](const Shape& s, uint64_t seed) { return randn_f64(s, seed, 0.3).to(dt).detach().set_requires_grad(true); };
    Tensor x = make({N, D}, 1), w1 = make({E, H, D}, 2), w3 = make({E, H, D}, 3), w2 = make({E, D, H}, 4);
    Tensor seed = randn_f64({N, D}, 5, 1.0, false).to(dt);
    Tensor y = expert_swiglu_ffn(x, w1, w3, w2, off);
    y.backward(seed);
    Tensor x2 = x.detach().clone().set_requires_grad(true), a1 = w1.detach().clone().set_requires_grad(true),
           a3 = w3.detach().clone().set_requires_grad(true), a2 = w2.detach().clone().set_requires_grad(true);
    Tensor ref = unfused(x2, a1, a3, a2, off);
    ref.backward(seed);
    const double tol = dt == DType::f64 ? 1e-12 : 2e-5;
    expect_close(y, ref, tol, "y");
    expect_close(x.grad(), x2.grad(), tol, "dx");
    expect_close(w1.grad(), a1.grad(), tol, "dw1");
    expect_close(w3.grad(), a3.grad(), tol, "dw3");
    expect_close(w2.grad(), a2.grad(), tol, "dw2");
    // The empty expert's weight grads are exactly zero.
    for (const Tensor& g : {w1.grad(), w3.grad(), w2.grad()})
      for (double v : g.select(0, 2).contiguous().to_double_vector()) ASSERT_EQ(v, 0.0);
  }
}

TEST(MoeExpertFfn, GradcheckF64) {
  const std::vector<int64_t> off{0, 3, 3, 8, 11};
  EXPECT_GRADCHECK([off](const std::vector<Tensor>& v) { return expert_swiglu_ffn(v[0], v[1], v[2], v[3], off); },
                   {randn_f64({11, 5}, 11), randn_f64({4, 7, 5}, 12, 0.5), randn_f64({4, 7, 5}, 13, 0.5),
                    randn_f64({4, 5, 7}, 14, 0.5)},
                   1e-6, 1e-8, 1e-6);
}

TEST(MoeExpertFfn, DeterministicRunToRun) {
  const int64_t N = 400, D = 32, H = 48, E = 6;
  const std::vector<int64_t> off{0, 100, 130, 250, 251, 330, 400};
  Tensor x = test::randn_f32({N, D}, 21), w1 = test::randn_f32({E, H, D}, 22, 0.2), w3 = test::randn_f32({E, H, D}, 23, 0.2),
         w2 = test::randn_f32({E, D, H}, 24, 0.2);
  std::vector<float> first;
  std::vector<float> first_grad;
  for (int run = 0; run < 3; ++run) {
    Tensor wr = w1.detach().clone().set_requires_grad(true);
    Tensor y = expert_swiglu_ffn(x, wr, w3, w2, off);
    y.backward(Tensor::ones({N, D}));
    if (run == 0) {
      first = y.to_vector<float>();
      first_grad = wr.grad().to_vector<float>();
    } else {
      EXPECT_EQ(y.to_vector<float>(), first) << "run " << run;
      EXPECT_EQ(wr.grad().to_vector<float>(), first_grad) << "run " << run;
    }
  }
}

TEST(MoeExpertFfn, ShapeErrorsNameOpAndShapes) {
  try {
    expert_swiglu_ffn(Tensor::zeros({4, 3}), Tensor::zeros({2, 5, 3}), Tensor::zeros({2, 5, 3}), Tensor::zeros({2, 5, 3}),
                      {0, 2, 4});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("expert_swiglu_ffn"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("w2 [2, 5, 3]"), std::string::npos) << e.what();
  }
  EXPECT_THROW(expert_swiglu_ffn(Tensor::zeros({4, 3}), Tensor::zeros({2, 5, 3}), Tensor::zeros({2, 5, 3}),
                                 Tensor::zeros({2, 3, 5}), {0, 2, 5}),
               Error);
}
