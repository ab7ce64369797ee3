// The dense ops of the CUDA backend (core/cuda/ops/dense_ops.cpp), reached through the CPU ops'
// device dispatch: forward and every grad against the same CPU op in f64 on the values the device
// sees (bf16-rounded activations and weights in the bf16 runs), with fp32 activations (error <=
// 1e-5 of the largest reference entry) and bf16 activations (<= 1e-2), plus the grads' devices and
// dtypes (weight grads fp32 on the device) and the refusals. Attention in bf16: 2e-2.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "core/cuda/ops/cuda_backend.h"
#include "core/ops.h"
#include "core/rng.h"
#include "layers/transformer.h"
#include "tests/cuda/test_seed.h"

namespace moe {
namespace {

class DenseOps : public ::testing::Test {
 protected:
  void SetUp() override { cuda::install_backend("DenseOps"); }
  void TearDown() override {
    clear_tape();
    cuda_backend("DenseOps").set_activation_dtype(DType::bf16);
  }
};

constexpr DType kActs[] = {DType::f32, DType::bf16};

double tol_for(DType act) { return act == DType::f32 ? 1e-5 : 1e-2; }

// Host fp32 values: shift + scale * N(0, 1), seeded.
Tensor rnd(const Shape& shape, uint64_t seed, double scale = 1.0, double shift = 0.0) {
  Philox rng(test::test_seed(seed), 0);
  std::vector<float> v(size_t(shape_numel(shape)));
  for (float& x : v) x = float(shift + scale * rng.normal());
  return Tensor::from_vector(v, shape);
}

// The reference's copy of h: the values the device sees (rounded through `seen`), in f64.
Tensor ref_of(const Tensor& h, DType seen) { return h.to(seen).to(DType::f64); }
Tensor ref_leaf(const Tensor& h, DType seen) {
  Tensor t = ref_of(h, seen);
  t.set_requires_grad(true);
  return t;
}
// A leaf on the device in dtype dt.
Tensor dev_leaf(const Tensor& h, DType dt) {
  Tensor t = h.to(dt).to(Device::cuda).detach();
  t.set_requires_grad(true);
  return t;
}
Tensor dev_of(const Tensor& h, DType dt) { return h.to(dt).to(Device::cuda); }

// max |got - want| <= tol * max |want|; got must be on `device` (the cuda device unless said) in
// dtype dt.
void expect_close(const Tensor& got, DType dt, const Tensor& want, double tol, const std::string& what,
                  Device device = Device::cuda) {
  ASSERT_TRUE(got.defined()) << what << ": undefined";
  EXPECT_EQ(got.device(), device) << what;
  EXPECT_EQ(got.dtype(), dt) << what << ": " << dtype_name(got.dtype());
  ASSERT_EQ(got.shape(), want.shape()) << what;
  const std::vector<double> g = got.to_double_vector(), w = want.to_double_vector();
  double err = 0, scale = 0;
  for (size_t i = 0; i < g.size(); ++i) {
    err = std::max(err, std::isnan(g[i]) ? INFINITY : std::abs(g[i] - w[i]));
    scale = std::max(scale, std::abs(w[i]));
  }
  if (std::getenv("MOE_PRINT_ERRORS")) std::printf("%s %s: relative error %.3g\n", what.c_str(), dtype_name(dt), err / std::max(scale, 1e-30));
  EXPECT_LE(err, tol * std::max(scale, 1e-30)) << what << ": max abs error " << err << ", largest entry " << scale
                                               << ", relative " << err / std::max(scale, 1e-30);
}

template <class F>
void expect_error(F&& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "expected an error containing '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
  clear_tape();
}

TEST_F(DenseOps, LinearWithBiasMatchesCpu) {
  for (DType act : kActs) {
    SCOPED_TRACE(dtype_name(act));
    const double tol = tol_for(act);
    Tensor xh = rnd({2, 7, 40}, 1), wh = rnd({24, 40}, 2, 0.2), bh = rnd({24}, 3), seed = rnd({2, 7, 24}, 4);
    Tensor xr = ref_leaf(xh, act), wr = ref_leaf(wh, act), br = ref_leaf(bh, act);
    Tensor yr = linear(xr, wr, br);
    yr.backward(ref_of(seed, act));
    Tensor xd = dev_leaf(xh, act), wd = dev_leaf(wh, DType::f32), bd = dev_leaf(bh, DType::f32);
    Tensor yd = linear(xd, wd, bd);
    yd.backward(dev_of(seed, act));
    expect_close(yd, act, yr, tol, "y");
    expect_close(xd.grad(), act, xr.grad(), tol, "dx");
    expect_close(wd.grad(), DType::f32, wr.grad(), tol, "dw");
    expect_close(bd.grad(), DType::f32, br.grad(), tol, "dbias");
  }
}

TEST_F(DenseOps, LinearWithoutBiasWeightGradOnly) {
  for (DType act : kActs) {
    SCOPED_TRACE(dtype_name(act));
    Tensor xh = rnd({13, 33}, 5), wh = rnd({9, 33}, 6, 0.3), seed = rnd({13, 9}, 7);
    Tensor wr = ref_leaf(wh, act);
    Tensor yr = linear(ref_of(xh, act), wr, Tensor());
    yr.backward(ref_of(seed, act));
    Tensor xd = dev_of(xh, act), wd = dev_leaf(wh, DType::f32);
    Tensor yd = linear(xd, wd, Tensor());
    yd.backward(dev_of(seed, act));
    expect_close(yd, act, yr, tol_for(act), "y");
    expect_close(wd.grad(), DType::f32, wr.grad(), tol_for(act), "dw");
    EXPECT_FALSE(xd.grad().defined());
  }
}

// Three projections of one input (QKV); the middle output gets no grad (zero weight grad, as on
// the CPU), the last one's grad is accumulated before backward runs from the first.
TEST_F(DenseOps, LinearSharedInputMatchesCpu) {
  for (DType act : kActs) {
    SCOPED_TRACE(dtype_name(act));
    const double tol = tol_for(act);
    Tensor xh = rnd({2, 7, 40}, 8);
    std::vector<Tensor> wh = {rnd({24, 40}, 9, 0.2), rnd({8, 40}, 10, 0.2), rnd({16, 40}, 11, 0.2)};
    Tensor s0 = rnd({2, 7, 24}, 12), s2 = rnd({2, 7, 16}, 13);
    Tensor xr = ref_leaf(xh, act);
    std::vector<Tensor> wr, wd;
    for (const Tensor& w : wh) wr.push_back(ref_leaf(w, act)), wd.push_back(dev_leaf(w, DType::f32));
    std::vector<Tensor> yr = linear_shared_input(xr, wr);
    accumulate_grad(yr[2], ref_of(s2, act));
    yr[0].backward(ref_of(s0, act));
    Tensor xd = dev_leaf(xh, act);
    std::vector<Tensor> yd = linear_shared_input(xd, wd);
    accumulate_grad(yd[2], dev_of(s2, act));
    yd[0].backward(dev_of(s0, act));
    for (size_t i = 0; i < 3; ++i) {
      const std::string index = std::to_string(i);
      expect_close(yd[i], act, yr[i], tol, std::string("y").append(index));
      expect_close(wd[i].grad(), DType::f32, wr[i].grad(), tol, std::string("dw").append(index));
    }
    expect_close(xd.grad(), act, xr.grad(), tol, "dx");
  }
}

TEST_F(DenseOps, RmsNormMatchesCpu) {
  for (DType act : kActs) {
    SCOPED_TRACE(dtype_name(act));
    cuda_backend("DenseOps").set_activation_dtype(act);
    const double tol = tol_for(act);
    Tensor xh = rnd({2, 7, 40}, 14, 1.5), wh = rnd({40}, 15, 0.1, 1.0), seed = rnd({2, 7, 40}, 16);
    Tensor xr = ref_leaf(xh, act), wr = ref_leaf(wh, act);
    Tensor yr = rms_norm(xr, wr, 1e-5);
    yr.backward(ref_of(seed, act));
    Tensor xd = dev_leaf(xh, act), wd = dev_leaf(wh, DType::f32);
    Tensor yd = rms_norm(xd, wd, 1e-5);
    yd.backward(dev_of(seed, act));
    expect_close(yd, act, yr, tol, "y");
    expect_close(xd.grad(), act, xr.grad(), tol, "dx");
    expect_close(wd.grad(), DType::f32, wr.grad(), tol, "dw");
  }
}

// The fp32 residual stream under bf16 activations: RMSNorm of an fp32 input returns bf16 (what
// the products take) and its input grad in fp32; the residual add of fp32 and bf16 sums in fp32.
TEST_F(DenseOps, Fp32ResidualStreamWithBf16Activations) {
  cuda_backend("DenseOps").set_activation_dtype(DType::bf16);
  Tensor xh = rnd({2, 7, 40}, 40, 1.5), wh = rnd({40}, 41, 0.1, 1.0), seed = rnd({2, 7, 40}, 42);
  Tensor xr = ref_leaf(xh, DType::f32), wr = ref_leaf(wh, DType::f32);
  Tensor yr = add(xr, rms_norm(xr, wr, 1e-5));
  yr.backward(ref_of(seed, DType::f32));
  Tensor xd = dev_leaf(xh, DType::f32), wd = dev_leaf(wh, DType::f32);
  Tensor nd = rms_norm(xd, wd, 1e-5);
  EXPECT_EQ(nd.dtype(), DType::bf16);
  Tensor yd = add(xd, nd);
  yd.backward(dev_of(seed, DType::f32));
  expect_close(yd, DType::f32, yr, 1e-2, "y");
  expect_close(xd.grad(), DType::f32, xr.grad(), 1e-2, "dx");
  expect_close(wd.grad(), DType::f32, wr.grad(), 1e-2, "dw");
}

// The output is fp32 whatever the activation dtype (the residual stream); ids i32 and i64, with
// repeats (the backward sums them).
TEST_F(DenseOps, EmbeddingMatchesCpu) {
  for (DType act : kActs) {
    for (DType id_dt : {DType::i32, DType::i64}) {
      SCOPED_TRACE(std::string(dtype_name(act)) + " ids " + dtype_name(id_dt));
      cuda_backend("DenseOps").set_activation_dtype(act);
      std::vector<int64_t> idv;
      for (int i = 0; i < 14; ++i) idv.push_back((i * 11) % 37 % (i % 3 == 0 ? 5 : 37));
      Tensor ids = Tensor::from_vector(idv, {2, 7}).to(id_dt);
      Tensor wh = rnd({37, 40}, 17), seed = rnd({2, 7, 40}, 18);
      Tensor wr = ref_leaf(wh, DType::f32);
      Tensor yr = embedding(wr, ids);
      yr.backward(ref_of(seed, act));
      Tensor wd = dev_leaf(wh, DType::f32);
      Tensor yd = embedding(wd, ids.to(Device::cuda));
      yd.backward(dev_of(seed, act));
      expect_close(yd, DType::f32, yr, 0.0, "y");  // the table's rows, exactly
      expect_close(wd.grad(), DType::f32, wr.grad(), tol_for(act), "dw");
    }
  }
  Tensor bad = Tensor::from_vector(std::vector<int32_t>{1, 2, 0, 37, 5}, {5}).to(Device::cuda);
  Tensor wd = rnd({37, 8}, 19).to(Device::cuda);
  expect_error([&] { embedding(wd, bad); }, "id 37 at position 3");
}

TEST_F(DenseOps, RopeMatchesCpu) {
  for (DType act : kActs) {
    SCOPED_TRACE(dtype_name(act));
    Tensor xh = rnd({2, 7, 3, 16}, 20), seed = rnd({2, 7, 3, 16}, 21);
    Tensor xr = ref_leaf(xh, act);
    Tensor yr = rope(xr, 10000.0, 5);
    yr.backward(ref_of(seed, act));
    Tensor xd = dev_leaf(xh, act);
    Tensor yd = rope(xd, 10000.0, 5);
    yd.backward(dev_of(seed, act));
    expect_close(yd, act, yr, tol_for(act), "y");
    expect_close(xd.grad(), act, xr.grad(), tol_for(act), "dx");
  }
}

// [B, S, H, Dh] (the backend's op) and [B, H, S, Dh] (causal_attention through transposed views).
TEST_F(DenseOps, CausalAttentionMatchesCpu) {
  for (bool bshd : {true, false}) {
    for (DType act : kActs) {
      SCOPED_TRACE(std::string(dtype_name(act)) + (bshd ? " bshd" : " bhsd"));
      // bf16: P and dS pass through bf16 on the tensor cores; 2e-2 as in attention_kernel_test
      // (the [1, 2, 11, 40] case reaches 1e-2 in dk).
      const double tol = act == DType::f32 ? 1e-5 : 2e-2;
      const Shape shape = bshd ? Shape{2, 19, 3, 24} : Shape{1, 2, 11, 40};
      Tensor qh = rnd(shape, 22), kh = rnd(shape, 23), vh = rnd(shape, 24), seed = rnd(shape, 25);
      auto attend = [bshd](const Tensor& q, const Tensor& k, const Tensor& v) {
        return bshd ? causal_attention_bshd(q, k, v) : causal_attention(q, k, v);
      };
      Tensor qr = ref_leaf(qh, act), kr = ref_leaf(kh, act), vr = ref_leaf(vh, act);
      Tensor yr = attend(qr, kr, vr);
      yr.backward(ref_of(seed, act));
      Tensor qd = dev_leaf(qh, act), kd = dev_leaf(kh, act), vd = dev_leaf(vh, act);
      Tensor yd = attend(qd, kd, vd);
      yd.backward(dev_of(seed, act));
      expect_close(yd, act, yr, tol, "o");
      expect_close(qd.grad(), act, qr.grad(), tol, "dq");
      expect_close(kd.grad(), act, kr.grad(), tol, "dk");
      expect_close(vd.grad(), act, vr.grad(), tol, "dv");
    }
  }
}

TEST_F(DenseOps, CrossEntropyMatchesCpu) {
  for (DType act : kActs) {
    SCOPED_TRACE(dtype_name(act));
    Tensor xh = rnd({14, 37}, 26, 2.0);
    std::vector<int32_t> tv;
    for (int i = 0; i < 14; ++i) tv.push_back(i % 5 == 2 ? -100 : (i * 7) % 37);
    Tensor t = Tensor::from_vector(tv, {14});
    Tensor xr = ref_leaf(xh, act);
    Tensor lr = cross_entropy(xr, t, -100);
    lr.backward(Tensor::scalar(0.7, DType::f64));
    Tensor xd = dev_leaf(xh, act);
    Tensor ld = cross_entropy(xd, t.to(Device::cuda), -100);
    EXPECT_EQ(ld.shape(), Shape{});
    ld.backward(Tensor::full({}, 0.7, DType::f32, Device::cuda));
    // The loss is an fp32 mean of fp32 row losses whatever the logits' dtype.
    expect_close(ld, DType::f32, lr, 1e-5, "loss");
    expect_close(xd.grad(), act, xr.grad(), tol_for(act), "dlogits");
  }
}

TEST_F(DenseOps, CrossEntropyAllIgnoredAndBadTargets) {
  Tensor xd = dev_leaf(rnd({3, 5}, 27), DType::f32);
  Tensor ign = Tensor::from_vector(std::vector<int64_t>{-1, -1, -1}, {3}).to(Device::cuda);
  Tensor l = cross_entropy(xd, ign, -1);
  EXPECT_EQ(l.item_double(), 0.0);
  l.backward(Tensor::full({}, 1.0, DType::f32, Device::cuda));
  for (double g : xd.grad().to_double_vector()) EXPECT_EQ(g, 0.0);
  Tensor bad = Tensor::from_vector(std::vector<int32_t>{1, 5, 0}, {3}).to(Device::cuda);
  expect_error([&] { cross_entropy(xd, bad, -100); }, "target 5 at row 1 is outside [0, 5)");
}

// A whole dense TransformerLM step on the device (embedding, norms, QKV, RoPE, attention, residual
// adds, SwiGLU MLP, LM head, cross-entropy; tied embeddings, in the fp32 run, sum two grads into
// one table) against the same model in f64 on the CPU with the device model's weights (rounded to
// bf16 in the bf16 run, as the device multiplies them): the loss and every parameter's grad.
// fp32: 1e-5 of the largest entry; bf16: the loss 1e-2, grads 3e-2 (every activation is rounded
// to bf16 on the device, about ten roundings deep, the reference's only at the weights).
TEST_F(DenseOps, TransformerLmStepMatchesCpu) {
  ModelConfig cfg;
  cfg.vocab_size = 37;
  cfg.d_model = 48;
  cfg.n_layers = 1;
  cfg.n_heads = 2;
  cfg.max_seq_len = 16;
  cfg.init_std = 0.1;
  std::vector<int64_t> idv, tv;
  for (int i = 0; i < 14; ++i) idv.push_back((i * 13 + 5) % 37);
  for (int i = 0; i < 14; ++i) tv.push_back(i % 7 == 6 ? kIgnoreIndex : idv[size_t(i + 1)]);
  Tensor ids = Tensor::from_vector(idv, {2, 7}), targets = Tensor::from_vector(tv, {2, 7});
  for (DType act : kActs) {
    {
      const bool tied = act == DType::f32;
      SCOPED_TRACE(std::string(dtype_name(act)) + (tied ? " tied" : " untied"));
      cuda_backend("DenseOps").set_activation_dtype(act);
      cfg.tied_embeddings = tied;
      TransformerLM dev_model(cfg, 41), ref(cfg, 41, {}, DType::f64);
      auto dp = dev_model.named_parameters(), rp = ref.named_parameters();
      ASSERT_EQ(dp.size(), rp.size());
      {
        NoGradGuard no_grad;
        for (size_t i = 0; i < dp.size(); ++i) rp[i].second.copy_(ref_of(dp[i].second, act));
      }
      dev_model.to(Device::cuda);
      LossOutput lr = ref.loss(ids, targets);
      lr.total.backward();
      LossOutput ld = dev_model.loss(ids.to(Device::cuda), targets.to(Device::cuda));
      ld.total.backward();
      // TransformerLM::loss brings the one-element loss to the host (differentiably).
      expect_close(ld.total, DType::f32, lr.total, act == DType::f32 ? 1e-5 : 1e-2, "loss", Device::cpu);
      for (size_t i = 0; i < dp.size(); ++i)
        expect_close(dp[i].second.grad(), DType::f32, rp[i].second.grad(), act == DType::f32 ? 1e-5 : 3e-2,
                     "grad of " + dp[i].first);
    }
  }
}

TEST_F(DenseOps, RefusesWhatTheDeviceDoesNotRun) {
  Tensor x64 = rnd({3, 8}, 28).to(DType::f64).to(Device::cuda), w = rnd({8}, 29).to(Device::cuda);
  expect_error([&] { rms_norm(x64, w, 1e-5); }, "f64");
  expect_error([&] { linear(rnd({3, 8}, 30), rnd({4, 8}, 31).to(Device::cuda), Tensor()); }, "linear");
  Tensor a = rnd({3, 8}, 32).to(Device::cuda);
  expect_error([&] { matmul(a, a.transpose(0, 1)); }, "not available on the cuda device");
  Tensor wb = rnd({4, 8}, 33).to(DType::bf16).to(Device::cuda);
  expect_error([&] { linear(a, wb, Tensor()); }, "expected f32 (the master weight) or the activation dtype f32");
  Tensor big = Tensor::zeros({1, 3, 2, 130}, DType::f32, Device::cuda);
  expect_error([&] { causal_attention_bshd(big, big, big); }, "head dim 130");
  expect_error([&] { rope(Tensor::zeros({1, 3, 2, 7}, DType::f32, Device::cuda), 1e4, 0); }, "must be even");
}

}  // namespace
}  // namespace moe
