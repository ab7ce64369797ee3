// The dense transformer and its layers: parameter names and init, f64 gradient checks of the
// whole model (tied and untied) and of each layer, causality, the FFN slot's extra losses,
// and the errors a bad config or bad ids raise.
#include <gtest/gtest.h>

#include <cmath>

#include "core/ops.h"
#include "layers/attention_layer.h"
#include "layers/init.h"
#include "layers/mlp.h"
#include "layers/transformer.h"
#include "optim/adamw.h"
#include "tests/gradcheck.h"

using namespace moe;
using test::randn_f64;

namespace {

ModelConfig tiny_config(bool tied = false) {
  ModelConfig cfg;
  cfg.vocab_size = 11;
  cfg.d_model = 8;
  cfg.n_layers = 1;
  cfg.n_heads = 2;
  cfg.max_seq_len = 8;
  cfg.tied_embeddings = tied;
  cfg.init_std = 0.4;  // large, so attention and SwiGLU are far from their linear regime
  return cfg;
}

Tensor ids_tensor(const std::vector<int64_t>& v, const Shape& shape) { return Tensor::from_vector<int64_t>(v, shape); }

std::vector<Tensor> params_of(const Module& m) { return m.parameters(); }

// An FFN with one learned gain and an extra loss on its output, standing in for an MoE layer.
class GainFfn : public FeedForward {
 public:
  explicit GainFfn(DType dt) { gain_ = register_parameter("gain", Tensor::full({1}, 0.7, dt)); }
  Tensor forward(const Tensor& x) override {
    Tensor y = mul(x, gain_);
    last_ = mean_all(square(y));
    return y;
  }
  std::vector<ExtraLoss> extra_losses() const override {
    return {ExtraLoss{"sq", mul_scalar(last_, 0.1), last_.item_double()}};
  }

 private:
  Tensor gain_, last_;
};

}  // namespace

TEST(Model, ParameterNamesShapesAndOrder) {
  ModelConfig cfg = tiny_config();
  cfg.n_layers = 2;
  TransformerLM m(cfg, 1);
  std::vector<std::pair<std::string, Shape>> expected{{"tok_emb.weight", {11, 8}}};
  for (int l = 0; l < 2; ++l) {
    std::string p = "blocks." + std::to_string(l) + ".";
    expected.push_back({p + "norm1.weight", {8}});
    for (const char* w : {"wq", "wk", "wv", "wo"}) expected.push_back({p + "attn." + w + ".weight", {8, 8}});
    expected.push_back({p + "norm2.weight", {8}});
    expected.push_back({p + "ffn.w1.weight", {24, 8}});  // 8/3 * 8 = 21.3 -> 24
    expected.push_back({p + "ffn.w2.weight", {8, 24}});
    expected.push_back({p + "ffn.w3.weight", {24, 8}});
  }
  expected.push_back({"norm_f.weight", {8}});
  expected.push_back({"lm_head.weight", {11, 8}});
  auto named = m.named_parameters();
  ASSERT_EQ(named.size(), expected.size());
  for (size_t i = 0; i < named.size(); ++i) {
    EXPECT_EQ(named[i].first, expected[i].first);
    EXPECT_EQ(named[i].second.shape(), expected[i].second) << named[i].first;
    EXPECT_EQ(named[i].second.name(), expected[i].first);
  }
  TransformerLM tied(tiny_config(true), 1);
  EXPECT_EQ(tied.named_parameters().back().first, "norm_f.weight");  // no lm_head when tied
  EXPECT_TRUE(tied.lm_head_weight().same_storage(tied.named_parameters().front().second));
}

TEST(Model, DenseHiddenSizeRoundsEightThirdsUpToMultipleOfEight) {
  ModelConfig cfg;
  cfg.d_model = 48;
  EXPECT_EQ(dense_hidden_size(cfg), 128);
  cfg.d_model = 128;
  EXPECT_EQ(dense_hidden_size(cfg), 344);  // 341.33 -> 344
  cfg.d_model = 8;
  EXPECT_EQ(dense_hidden_size(cfg), 24);
  cfg.d_model = 3;
  EXPECT_EQ(dense_hidden_size(cfg), 8);
  cfg.d_ff = 100;
  EXPECT_EQ(dense_hidden_size(cfg), 100);
}

TEST(Model, InitIsDeterministicScaledAndSeedDependent) {
  ModelConfig cfg;
  cfg.vocab_size = 64;
  cfg.d_model = 128;
  cfg.n_layers = 4;
  cfg.n_heads = 4;
  TransformerLM a(cfg, 7), b(cfg, 7), c(cfg, 8);
  auto na = a.named_parameters(), nb = b.named_parameters(), nc = c.named_parameters();
  for (size_t i = 0; i < na.size(); ++i)
    EXPECT_EQ(na[i].second.to_vector<float>(), nb[i].second.to_vector<float>()) << na[i].first;
  EXPECT_NE(na[0].second.to_vector<float>(), nc[0].second.to_vector<float>());  // tok_emb
  EXPECT_NE(na[2].second.to_vector<float>(), nc[2].second.to_vector<float>());
  auto std_of = [](const Tensor& t) {
    double s = 0, s2 = 0;
    for (float v : t.to_vector<float>()) s += v, s2 += double(v) * v;
    double n = double(t.numel());
    return std::sqrt(s2 / n - (s / n) * (s / n));
  };
  for (auto& [name, p] : na) {
    if (name.find("norm") != std::string::npos) {
      for (float v : p.to_vector<float>()) ASSERT_EQ(v, 1.0f) << name;
    } else if (name.find(".wo.") != std::string::npos || name.find(".w2.") != std::string::npos) {
      EXPECT_NEAR(std_of(p), 0.02 / std::sqrt(8.0), 0.05 * 0.02 / std::sqrt(8.0)) << name;
    } else {
      EXPECT_NEAR(std_of(p), 0.02, 0.05 * 0.02) << name;  // >= 8192 samples: 5% is > 6 sigma
    }
  }
}

TEST(Model, Float64ModelMatchesFloat32Model) {
  ModelConfig cfg = tiny_config();
  cfg.n_layers = 2;
  TransformerLM m32(cfg, 3), m64(cfg, 3, {}, DType::f64);
  Tensor ids = ids_tensor({1, 5, 9, 0, 3, 10, 2, 2, 7, 4}, {2, 5});
  std::vector<double> a = m32.forward(ids).to_double_vector(), b = m64.forward(ids).to_double_vector();
  clear_tape();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-4 * (1 + std::abs(b[i]))) << i;
}

// The whole model's loss against central differences in f64, every parameter element.
TEST(Model, GradcheckWholeDenseModelUntiedAndTied) {
  Tensor ids = ids_tensor({1, 5, 9, 0, 3, 10, 2, 2, 7, 4}, {2, 5});
  Tensor targets = ids_tensor({5, 9, 0, 3, kIgnoreIndex, 2, 2, 7, 4, 6}, {2, 5});
  for (bool tied : {false, true}) {
    TransformerLM m(tiny_config(tied), 11, {}, DType::f64);
    // Perturbing the parameters in place moves the model; the inputs vector is just the handle.
    EXPECT_GRADCHECK([&](const std::vector<Tensor>&) { return m.loss(ids, targets).total; }, params_of(m), 1e-6,
                     1e-8, 1e-5);
  }
}

TEST(Model, GradcheckAttentionAndMlpLayersWrtInput) {
  ModelConfig cfg = tiny_config();
  cfg.d_model = 12;
  cfg.n_heads = 3;  // head_dim 4
  Philox rng(5, stream_id(RngStream::test));
  Attention attn(cfg, rng, DType::f64);
  MLP mlp(cfg, 10, rng, DType::f64);
  Tensor x = randn_f64({2, 7, 12}, 41);
  EXPECT_GRADCHECK([&](const std::vector<Tensor>& v) { return attn.forward(v[0], 3); }, {x}, 1e-6, 1e-8, 1e-5);
  EXPECT_GRADCHECK([&](const std::vector<Tensor>& v) { return mlp.forward(v[0]); }, {x}, 1e-6, 1e-8, 1e-5);
  EXPECT_GRADCHECK([&](const std::vector<Tensor>&) { return attn.forward(x); }, params_of(attn), 1e-6, 1e-8, 1e-5);
}

TEST(Model, LogitsAreCausal) {
  ModelConfig cfg = tiny_config();
  cfg.n_layers = 2;
  TransformerLM m(cfg, 2);
  NoGradGuard ng;
  Tensor a = m.forward(ids_tensor({1, 2, 3, 4, 5, 6}, {1, 6}));
  Tensor b = m.forward(ids_tensor({1, 2, 3, 9, 0, 10}, {1, 6}));  // change positions 3..5
  std::vector<float> va = a.to_vector<float>(), vb = b.to_vector<float>();
  const size_t V = 11;
  for (size_t i = 0; i < 3 * V; ++i) EXPECT_EQ(va[i], vb[i]) << "position " << i / V << " saw the future";
  double diff = 0;
  for (size_t i = 3 * V; i < 6 * V; ++i) diff = std::max(diff, double(std::abs(va[i] - vb[i])));
  EXPECT_GT(diff, 1e-4);  // later positions do see the change
}

TEST(Model, FfnFactoryExtraLossesAddToTotalAndGradcheck) {
  ModelConfig cfg = tiny_config();
  cfg.n_layers = 2;
  auto factory = [](int layer) -> std::shared_ptr<FeedForward> {
    return layer == 1 ? std::make_shared<GainFfn>(DType::f64) : nullptr;
  };
  TransformerLM m(cfg, 4, factory, DType::f64);
  auto named = m.named_parameters();
  bool has_gain = false, has_dense0 = false, has_dense1 = false;
  for (auto& [n, p] : named) {
    has_gain |= n == "blocks.1.ffn.gain";
    has_dense0 |= n == "blocks.0.ffn.w1.weight";
    has_dense1 |= n == "blocks.1.ffn.w1.weight";
  }
  EXPECT_TRUE(has_gain && has_dense0 && !has_dense1);
  Tensor ids = ids_tensor({1, 5, 9, 0, 3, 10}, {2, 3});
  Tensor targets = ids_tensor({5, 9, 0, 3, 10, 2}, {2, 3});
  LossOutput out = m.loss(ids, targets);
  ASSERT_EQ(out.extra.size(), 1u);
  EXPECT_EQ(out.extra[0].first, 1);
  EXPECT_EQ(out.extra[0].second.name, "sq");
  EXPECT_NEAR(out.total.item<double>(), out.lm.item<double>() + 0.1 * out.extra[0].second.unscaled, 1e-12);
  EXPECT_GT(out.extra[0].second.unscaled, 0.0);
  clear_tape();
  EXPECT_GRADCHECK([&](const std::vector<Tensor>&) { return m.loss(ids, targets).total; }, params_of(m), 1e-6, 1e-8,
                   1e-5);
}

TEST(Model, DecayGroupsOfTheModel) {
  TransformerLM m(tiny_config(), 1);
  AdamW opt(m.named_parameters());
  for (auto& [n, p] : m.named_parameters()) EXPECT_EQ(opt.decays(n), n.find("norm") == std::string::npos) << n;
}

TEST(Model, BadConfigAndInputsRaiseClearErrors) {
  auto message_of = [](auto&& fn) {
    try {
      fn();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("<no error>");
  };
  ModelConfig cfg = tiny_config();
  cfg.n_heads = 3;
  EXPECT_NE(message_of([&] { TransformerLM m(cfg, 1); }).find("n_heads=3"), std::string::npos);
  cfg = tiny_config();
  cfg.d_model = 6;
  cfg.n_heads = 2;  // head_dim 3 is odd
  EXPECT_NE(message_of([&] { TransformerLM m(cfg, 1); }).find("even"), std::string::npos);
  cfg = tiny_config();
  cfg.use_moe = true;
  EXPECT_NE(message_of([&] { TransformerLM m(cfg, 1); }).find("FfnFactory"), std::string::npos);

  TransformerLM m(tiny_config(), 1);
  EXPECT_NE(message_of([&] { m.forward(ids_tensor({1, 2, 3, 4, 5, 6, 7, 8, 9}, {1, 9})); }).find("max_seq_len=8"),
            std::string::npos);
  EXPECT_NE(message_of([&] { m.forward(Tensor::zeros({1, 3}, DType::f32)); }).find("i32 or i64"),
            std::string::npos);
  EXPECT_NE(message_of([&] { m.forward(ids_tensor({1, 2, 3}, {3})); }).find("[3]"), std::string::npos);
  EXPECT_NE(message_of([&] { m.loss(ids_tensor({1, 2}, {1, 2}), ids_tensor({1, 2, 3}, {1, 3})); }).find("[1, 3]"),
            std::string::npos);
  EXPECT_THROW(m.forward(ids_tensor({1, 11}, {1, 2})), Error);  // id 11 outside vocab 11
  clear_tape();
}

TEST(Model, InitNormalIsStandardNormalAndCounterBased) {
  Philox a(9, stream_id(RngStream::init), 5), b(9, stream_id(RngStream::init), 5);
  Tensor x = Tensor::empty({200001}, DType::f64), y = Tensor::empty({200001}, DType::f64);
  init_normal_(x, a, 1.0);
  init_normal_(y, b, 1.0);
  EXPECT_EQ(x.to_vector<double>(), y.to_vector<double>());
  EXPECT_EQ(a.offset(), (2 + 100001) * 4u);  // starts at the next whole block after offset 5
  double m1 = 0, m2 = 0, m4 = 0;
  for (double v : x.to_vector<double>()) m1 += v, m2 += v * v, m4 += v * v * v * v;
  const double n = double(x.numel());
  EXPECT_NEAR(m1 / n, 0.0, 0.01);       // sd of the mean: 0.0022
  EXPECT_NEAR(m2 / n, 1.0, 0.02);       // sd: 0.0032
  EXPECT_NEAR(m4 / n, 3.0, 0.1);        // a normal's fourth moment; sd: 0.02
  // The next draw continues the stream instead of repeating it.
  Tensor z = Tensor::empty({4}, DType::f64);
  init_normal_(z, a, 1.0);
  EXPECT_NE(z.to_vector<double>()[0], x.to_vector<double>()[0]);
}
