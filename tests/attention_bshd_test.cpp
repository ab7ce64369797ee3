// causal_attention_bshd (the [B, S, H, Dh] entry the attention layer uses) against causal_attention
// on transposed inputs, in-place strided operands (a fused-QKV-like view), and f64 gradient checks.
#include <gtest/gtest.h>

#include "core/ops.h"
#include "tests/gradcheck.h"

using namespace moe;
using test::randn_f64;

namespace {

void expect_close(const std::vector<double>& got, const std::vector<double>& ref, double tol, const char* what) {
  ASSERT_EQ(got.size(), ref.size());
  for (size_t i = 0; i < ref.size(); ++i) ASSERT_NEAR(got[i], ref[i], tol) << what << " at " << i;
}

}  // namespace

TEST(AttentionBshd, MatchesHeadMajorEntryForwardAndBackward) {
  // S = 70 spans two row blocks; odd B, H, Dh.
  const Shape s{3, 70, 5, 6};  // [B, S, H, Dh]
  for (DType dt : {DType::f64, DType::f32}) {
    Tensor q = randn_f64(s, 1).to(dt).detach().set_requires_grad(true);
    Tensor k = randn_f64(s, 2).to(dt).detach().set_requires_grad(true);
    Tensor v = randn_f64(s, 3).to(dt).detach().set_requires_grad(true);
    Tensor seed = randn_f64(s, 4, 1.0, false).to(dt);
    Tensor out = causal_attention_bshd(q, k, v);
    ASSERT_EQ(out.shape(), s);
    out.backward(seed);
    Tensor q2 = q.detach().clone().set_requires_grad(true), k2 = k.detach().clone().set_requires_grad(true),
           v2 = v.detach().clone().set_requires_grad(true);
    Tensor ref = causal_attention(q2.transpose(1, 2), k2.transpose(1, 2), v2.transpose(1, 2)).transpose(1, 2);
    ref.backward(seed);
    const double tol = dt == DType::f64 ? 1e-13 : 1e-6;
    expect_close(out.to_double_vector(), ref.contiguous().to_double_vector(), tol, "out");
    expect_close(q.grad().to_double_vector(), q2.grad().to_double_vector(), tol, "dq");
    expect_close(k.grad().to_double_vector(), k2.grad().to_double_vector(), tol, "dk");
    expect_close(v.grad().to_double_vector(), v2.grad().to_double_vector(), tol, "dv");
    EXPECT_EQ(q.grad().shape(), s);
  }
}

TEST(AttentionBshd, StridedOperandsMatchContiguousCopies) {
  // q, k, v as column slices of one [B, S, H, 3 Dh] tensor (row stride 3 H Dh, head stride 3 Dh),
  // read by BLAS in place: results must equal those on contiguous copies, bit for bit, forward
  // and backward.
  const int64_t B = 2, S = 9, H = 3, D = 4;
  Tensor packed = test::randn_f32({B, S, H, 3 * D}, 7).set_requires_grad(true);
  Tensor seed = test::randn_f32({B, S, H, D}, 8);
  auto part = [&](const Tensor& t, int64_t i) { return t.slice(3, i * D, (i + 1) * D); };
  ASSERT_FALSE(part(packed, 0).is_contiguous());
  Tensor strided = causal_attention_bshd(part(packed, 0), part(packed, 1), part(packed, 2));
  strided.backward(seed);
  Tensor copy = packed.detach().clone().set_requires_grad(true);
  Tensor dense =
      causal_attention_bshd(part(copy, 0).contiguous(), part(copy, 1).contiguous(), part(copy, 2).contiguous());
  dense.backward(seed);
  EXPECT_EQ(strided.to_vector<float>(), dense.to_vector<float>());
  EXPECT_EQ(packed.grad().to_vector<float>(), copy.grad().to_vector<float>());
}

TEST(AttentionBshd, GradcheckF64) {
  Tensor q = randn_f64({2, 7, 3, 6}, 31), k = randn_f64({2, 7, 3, 6}, 32), v = randn_f64({2, 7, 3, 6}, 33);
  EXPECT_GRADCHECK([](const std::vector<Tensor>& x) { return causal_attention_bshd(x[0], x[1], x[2]); }, {q, k, v},
                   1e-6, 1e-7, 1e-5);
  // Several row blocks (S = 67 > 64), q and k the same tensor, and v a strided view of a wider
  // tensor (row stride 2 H Dh).
  Tensor a = randn_f64({1, 67, 2, 3}, 34), b = randn_f64({1, 67, 4, 3}, 35);
  EXPECT_GRADCHECK(
      [](const std::vector<Tensor>& x) { return causal_attention_bshd(x[0], x[0], x[1].slice(2, 1, 3)); }, {a, b},
      1e-6, 1e-7, 1e-5);
}

TEST(AttentionBshd, ShapeErrorsNameOpAndShapes) {
  try {
    causal_attention_bshd(Tensor::zeros({1, 3, 2, 4}), Tensor::zeros({1, 4, 2, 4}), Tensor::zeros({1, 3, 2, 4}));
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("causal_attention_bshd: q [1, 3, 2, 4], k [1, 4, 2, 4] and v [1, 3, 2, 4]"),
              std::string::npos)
        << e.what();
  }
}

TEST(AttentionBshd, SavedAndRecomputedProbabilitiesAgree) {
  // The backward reads the forward's P when it fits the budget and recomputes it from the
  // logsumexp otherwise: both give the same grads (to rounding), and both pass a gradient check.
  const Shape s{2, 70, 3, 5};
  Tensor q = randn_f64(s, 51), k = randn_f64(s, 52), v = randn_f64(s, 53), seed = randn_f64(s, 54, 1.0, false);
  auto grads = [&](int64_t budget) {
    const int64_t prev = set_attention_saved_probs_budget(budget);
    std::vector<Tensor> in{q.detach().clone().set_requires_grad(true), k.detach().clone().set_requires_grad(true),
                           v.detach().clone().set_requires_grad(true)};
    causal_attention_bshd(in[0], in[1], in[2]).backward(seed);
    set_attention_saved_probs_budget(prev);
    return std::vector<Tensor>{in[0].grad(), in[1].grad(), in[2].grad()};
  };
  std::vector<Tensor> kept = grads(int64_t(1) << 30), recomputed = grads(0);
  for (int i = 0; i < 3; ++i) expect_close(kept[i].to_double_vector(), recomputed[i].to_double_vector(), 1e-12, "grad");
  const int64_t prev = set_attention_saved_probs_budget(0);
  EXPECT_GRADCHECK([](const std::vector<Tensor>& x) { return causal_attention_bshd(x[0], x[1], x[2]); },
                   {randn_f64({1, 67, 2, 3}, 55), randn_f64({1, 67, 2, 3}, 56), randn_f64({1, 67, 2, 3}, 57)}, 1e-6,
                   1e-7, 1e-5);
  set_attention_saved_probs_budget(prev);
}
