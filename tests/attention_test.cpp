// causal_attention: forward against a naive double-precision softmax(q k^T / sqrt(d) + mask) v,
// causality (outputs never see later tokens), f64 gradient checks across row blocks, f32 vs f64 grads.
#include <gtest/gtest.h>

#include <cmath>

#include "core/ops.h"
#include "tests/gradcheck.h"

using namespace moe;
using test::randn_f64;

namespace {

std::vector<double> naive_attention(const Tensor& q, const Tensor& k, const Tensor& v) {
  int64_t BH = q.shape()[0] * q.shape()[1], S = q.shape()[2], D = q.shape()[3];
  std::vector<double> qv = q.to_double_vector(), kv = k.to_double_vector(), vv = v.to_double_vector();
  std::vector<double> out(qv.size(), 0.0);
  double scale = 1.0 / std::sqrt(double(D));
  for (int64_t h = 0; h < BH; ++h)
    for (int64_t i = 0; i < S; ++i) {
      std::vector<double> s(size_t(i + 1));
      double mx = -1e300, sum = 0;
      for (int64_t j = 0; j <= i; ++j) {
        double dot = 0;
        for (int64_t c = 0; c < D; ++c) dot += qv[size_t((h * S + i) * D + c)] * kv[size_t((h * S + j) * D + c)];
        s[size_t(j)] = dot * scale;
        mx = std::max(mx, s[size_t(j)]);
      }
      for (double& x : s) sum += (x = std::exp(x - mx));
      for (int64_t j = 0; j <= i; ++j)
        for (int64_t c = 0; c < D; ++c)
          out[size_t((h * S + i) * D + c)] += s[size_t(j)] / sum * vv[size_t((h * S + j) * D + c)];
    }
  return out;
}

void expect_close(const std::vector<double>& got, const std::vector<double>& ref, double tol, const char* what) {
  ASSERT_EQ(got.size(), ref.size());
  for (size_t i = 0; i < ref.size(); ++i) ASSERT_NEAR(got[i], ref[i], tol) << what << " at " << i;
}

}  // namespace

TEST(Attention, ForwardMatchesNaiveSoftmaxInDouble) {
  {
    Tensor q = randn_f64({2, 3, 7, 6}, 1, 1.0, false), k = randn_f64({2, 3, 7, 6}, 2, 1.0, false),
           v = randn_f64({2, 3, 7, 6}, 3, 1.0, false);
    std::vector<double> ref = naive_attention(q, k, v);
    expect_close(causal_attention(q, k, v).to_double_vector(), ref, 1e-12, "f64");
    expect_close(causal_attention(q.to(DType::f32), k.to(DType::f32), v.to(DType::f32)).to_double_vector(), ref, 2e-5,
                 "f32");
  }
  // S spans three row blocks; large-magnitude scores test the max-subtraction.
  Tensor q = randn_f64({1, 2, 150, 5}, 4, 3.0, false), k = randn_f64({1, 2, 150, 5}, 5, 3.0, false),
         v = randn_f64({1, 2, 150, 5}, 6, 1.0, false);
  std::vector<double> ref = naive_attention(q, k, v);
  expect_close(causal_attention(q, k, v).to_double_vector(), ref, 1e-11, "f64, S=150");
  expect_close(causal_attention(q.to(DType::f32), k.to(DType::f32), v.to(DType::f32)).to_double_vector(), ref, 1e-4,
               "f32, S=150");
  // The first token attends only to itself.
  std::vector<double> o = causal_attention(q, k, v).slice(2, 0, 1).contiguous().to_double_vector();
  std::vector<double> v0 = v.slice(2, 0, 1).contiguous().to_double_vector();
  expect_close(o, v0, 1e-15, "token 0");
}

TEST(Attention, OutputsDoNotDependOnLaterTokens) {
  Shape s{2, 2, 100, 8};
  Tensor q = test::randn_f32(s, 11), k = test::randn_f32(s, 12), v = test::randn_f32(s, 13);
  Tensor out = causal_attention(q, k, v);
  for (int64_t t : {1, 37, 64, 99}) {
    // Replace every token from t on (in q, k and v) with different values.
    Tensor q2 = q.clone(), k2 = k.clone(), v2 = v.clone();
    q2.slice(2, t, 100).copy_(test::randn_f32({2, 2, 100 - t, 8}, 20 + uint64_t(t), 5.0));
    k2.slice(2, t, 100).copy_(test::randn_f32({2, 2, 100 - t, 8}, 40 + uint64_t(t), 5.0));
    v2.slice(2, t, 100).copy_(test::randn_f32({2, 2, 100 - t, 8}, 60 + uint64_t(t), 5.0));
    Tensor out2 = causal_attention(q2, k2, v2);
    EXPECT_EQ(out2.slice(2, 0, t).contiguous().to_vector<float>(), out.slice(2, 0, t).contiguous().to_vector<float>())
        << "changing tokens >= " << t << " changed earlier outputs";
    EXPECT_NE(out2.slice(2, t, t + 1).contiguous().to_vector<float>(),
              out.slice(2, t, t + 1).contiguous().to_vector<float>());
  }
}

TEST(Attention, GradcheckF64) {
  Tensor q = randn_f64({2, 3, 7, 6}, 31), k = randn_f64({2, 3, 7, 6}, 32), v = randn_f64({2, 3, 7, 6}, 33);
  EXPECT_GRADCHECK([](const std::vector<Tensor>& x) { return causal_attention(x[0], x[1], x[2]); }, {q, k, v}, 1e-6,
                   1e-7, 1e-5);
  // Several row blocks (S = 67 > 64), the same tensor as q and k, and a non-contiguous v.
  Tensor a = randn_f64({1, 2, 67, 3}, 34), b = randn_f64({1, 67, 2, 3}, 35);
  EXPECT_GRADCHECK([](const std::vector<Tensor>& x) { return causal_attention(x[0], x[0], x[1].transpose(1, 2)); },
                   {a, b}, 1e-6, 1e-7, 1e-5);
}

TEST(Attention, F32GradsMatchF64Grads) {
  Shape s{2, 3, 130, 16};
  Tensor q = randn_f64(s, 41), k = randn_f64(s, 42), v = randn_f64(s, 43), seed = randn_f64(s, 44, 1.0, false);
  causal_attention(q, k, v).backward(seed);
  Tensor q32 = q.detach().to(DType::f32).set_requires_grad(true),
         k32 = k.detach().to(DType::f32).set_requires_grad(true),
         v32 = v.detach().to(DType::f32).set_requires_grad(true);
  causal_attention(q32, k32, v32).backward(seed.to(DType::f32));
  expect_close(q32.grad().to_double_vector(), q.grad().to_double_vector(), 1e-4, "dq");
  expect_close(k32.grad().to_double_vector(), k.grad().to_double_vector(), 1e-4, "dk");
  expect_close(v32.grad().to_double_vector(), v.grad().to_double_vector(), 1e-4, "dv");
}

TEST(Attention, ShapeErrorsNameOpAndShapes) {
  try {
    causal_attention(Tensor::zeros({1, 2, 3, 4}), Tensor::zeros({1, 2, 4, 4}), Tensor::zeros({1, 2, 3, 4}));
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("causal_attention: q [1, 2, 3, 4], k [1, 2, 4, 4] and v [1, 2, 3, 4]"),
              std::string::npos)
        << e.what();
  }
  EXPECT_THROW(causal_attention(Tensor::zeros({2, 3, 4}), Tensor::zeros({2, 3, 4}), Tensor::zeros({2, 3, 4})), Error);
}
