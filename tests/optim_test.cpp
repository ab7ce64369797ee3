// Optimizer pieces: AdamW against hand-computed (and torch-confirmed) values, its decay
// groups and checkpointable state; LR schedules at their boundaries; global-norm clipping.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/ops.h"
#include "optim/adamw.h"
#include "optim/clip.h"
#include "optim/schedule.h"

using namespace moe;

namespace {

Tensor param(const std::vector<double>& v, const Shape& shape, const std::string& name) {
  Tensor t = Tensor::from_vector<double>(v, shape);
  t.set_requires_grad(true);
  t.set_name(name);
  return t;
}

void set_grad(Tensor p, const std::vector<double>& g) { p.set_grad(Tensor::from_vector<double>(g, p.shape())); }

}  // namespace

// lr 0.1, betas (0.9, 0.999), eps 1e-8, wd 0.1, p0 = [1, -2, 0.5], g1 = [0.5, -1, 2], g2 = [0.1, 0.2, -0.3].
// Step 1 by hand: m = 0.1 g1, v = 0.001 g1^2, so m_hat / sqrt(v_hat) = sign(g1) and the Adam
// step is lr * sign(g1) (up to eps); decay first scales p by 1 - lr wd = 0.99:
// [0.99 - 0.1, -1.98 + 0.1, 0.495 - 0.1] = [0.89, -1.88, 0.395]. Step 2 values are from
// torch.optim.AdamW (float64) with the same settings.
TEST(AdamW, TwoStepsMatchHandComputedValuesWithDecay) {
  Tensor p = param({1.0, -2.0, 0.5}, {1, 3}, "w");
  AdamW opt({{"w", p}}, AdamWConfig{0.9, 0.999, 1e-8, 0.1});
  EXPECT_TRUE(opt.decays("w"));
  set_grad(p, {0.5, -1.0, 2.0});
  opt.step(0.1);
  std::vector<double> s1 = p.to_vector<double>();
  EXPECT_NEAR(s1[0], 0.890000002, 1e-12);
  EXPECT_NEAR(s1[1], -1.880000001, 1e-12);
  EXPECT_NEAR(s1[2], 0.3950000005, 1e-12);
  set_grad(p, {0.1, 0.2, -0.3});
  opt.step(0.1);
  std::vector<double> s2 = p.to_vector<double>();
  EXPECT_NEAR(s2[0], 0.8007959063646517, 1e-12);
  EXPECT_NEAR(s2[1], -1.8100973939804945, 1e-12);
  EXPECT_NEAR(s2[2], 0.33583019520099777, 1e-12);
  // m = 0.9 * 0.1 g1 + 0.1 g2; v = 0.999 * 0.001 g1^2 + 0.001 g2^2.
  std::vector<double> m = opt.exp_avg().at("w").to_vector<double>();
  std::vector<double> v = opt.exp_avg_sq().at("w").to_vector<double>();
  EXPECT_NEAR(m[0], 0.055, 1e-15);
  EXPECT_NEAR(m[2], 0.15, 1e-15);
  EXPECT_NEAR(v[1], 0.999 * 0.001 + 0.001 * 0.04, 1e-15);
  EXPECT_EQ(opt.steps().at("w").item<int64_t>(), 2);
}

TEST(AdamW, OneDimParamsGetNoWeightDecay) {
  // Same numbers as above but 1-d (a norm gain / bias): no decay, so step 1 is p - lr sign(g).
  Tensor p = param({1.0, -2.0, 0.5}, {3}, "norm.weight");
  AdamW opt({{"norm.weight", p}}, AdamWConfig{0.9, 0.999, 1e-8, 0.1});
  EXPECT_FALSE(opt.decays("norm.weight"));
  set_grad(p, {0.5, -1.0, 2.0});
  opt.step(0.1);
  std::vector<double> s1 = p.to_vector<double>();
  EXPECT_NEAR(s1[0], 0.900000002, 1e-12);
  EXPECT_NEAR(s1[1], -1.900000001, 1e-12);
  EXPECT_NEAR(s1[2], 0.4000000005, 1e-12);
  set_grad(p, {0.1, 0.2, -0.3});
  opt.step(0.1);
  std::vector<double> s2 = p.to_vector<double>();
  EXPECT_NEAR(s2[0], 0.8196959063846518, 1e-12);
  EXPECT_NEAR(s2[1], -1.8488973939904945, 1e-12);
  EXPECT_NEAR(s2[2], 0.3447801952059978, 1e-12);
}

TEST(AdamW, Float32MatchesFloat64Path) {
  Tensor p = Tensor::from_vector<float>({1.0f, -2.0f, 0.5f}, {1, 3});
  p.set_requires_grad(true);
  AdamW opt({{"w", p}}, AdamWConfig{0.9, 0.999, 1e-8, 0.1});
  p.set_grad(Tensor::from_vector<float>({0.5f, -1.0f, 2.0f}, {1, 3}));
  opt.step(0.1);
  p.set_grad(Tensor::from_vector<float>({0.1f, 0.2f, -0.3f}, {1, 3}));
  opt.step(0.1);
  std::vector<float> s = p.to_vector<float>();
  EXPECT_NEAR(s[0], 0.8007959063646517, 1e-6);
  EXPECT_NEAR(s[1], -1.8100973939804945, 1e-6);
  EXPECT_NEAR(s[2], 0.33583019520099777, 1e-6);
}

TEST(AdamW, ParamsWithoutGradAreUntouched) {
  Tensor a = param({1.0, 2.0}, {1, 2}, "a"), b = param({3.0, 4.0}, {1, 2}, "b");
  AdamW opt({{"a", a}, {"b", b}});
  set_grad(a, {1.0, 1.0});
  opt.step(0.01);
  EXPECT_EQ(b.to_vector<double>(), (std::vector<double>{3.0, 4.0}));
  EXPECT_EQ(opt.steps().at("b").item<int64_t>(), 0);
  EXPECT_EQ(opt.steps().at("a").item<int64_t>(), 1);
  EXPECT_EQ(opt.exp_avg().at("b").to_vector<double>(), (std::vector<double>{0.0, 0.0}));
  EXPECT_LT(a.to_vector<double>()[0], 1.0);
  opt.zero_grad();
  EXPECT_FALSE(a.grad().defined());
}

TEST(AdamW, StateRoundTripContinuesBitExactly) {
  std::vector<double> w0{0.3, -0.7, 1.1, 0.05, -0.2, 0.9};
  Tensor pa = param(w0, {2, 3}, "w"), pb = param(w0, {2, 3}, "w");
  Tensor ga = param({0.2, 0.1}, {2}, "g"), gb = param({0.2, 0.1}, {2}, "g");
  AdamW a({{"w", pa}, {"g", ga}}), b({{"w", pb}, {"g", gb}});
  set_grad(pa, {0.1, -0.2, 0.3, -0.4, 0.5, -0.6});
  set_grad(ga, {1.0, -1.0});
  a.step(1e-2);
  // b resumes from a's state and weights, then both take the same next step.
  pb.copy_(pa);
  gb.copy_(ga);
  b.load_state(a.exp_avg(), a.exp_avg_sq(), a.steps());
  for (auto [p, o] : {std::pair{pa, ga}, std::pair{pb, gb}}) {
    set_grad(p, {0.01, 0.02, -0.03, 0.04, 0.05, 0.06});
    set_grad(o, {-0.5, 0.25});
  }
  a.step(1e-2);
  b.step(1e-2);
  EXPECT_EQ(pa.to_vector<double>(), pb.to_vector<double>());
  EXPECT_EQ(ga.to_vector<double>(), gb.to_vector<double>());
  EXPECT_EQ(b.steps().at("w").item<int64_t>(), 2);
}

TEST(AdamW, BadStateAndSettingsNameTheParameter) {
  Tensor p = param({1, 2, 3, 4}, {2, 2}, "blocks.0.attn.wq.weight");
  AdamW opt({{"blocks.0.attn.wq.weight", p}});
  auto m = opt.exp_avg(), v = opt.exp_avg_sq(), s = opt.steps();
  auto bad = m;
  bad["blocks.0.attn.wq.weight"] = Tensor::zeros({4}, DType::f64);
  try {
    opt.load_state(bad, v, s);
    FAIL() << "expected a shape error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("blocks.0.attn.wq.weight"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("[2, 2]"), std::string::npos) << e.what();
  }
  EXPECT_THROW(opt.load_state({}, v, s), Error);
  EXPECT_THROW(AdamW({{"x", p}}, AdamWConfig{1.0, 0.9, 1e-8, 0.0}), Error);
  EXPECT_THROW(AdamW({{"x", p}, {"x", p}}), Error);
  EXPECT_THROW(opt.step(std::nan("")), Error);
}

TEST(LrSchedule, WarmupCosineBoundaries) {
  LrScheduleConfig c{LrScheduleKind::cosine, 1.0, 0.1, 10, 110, 0, DecayShape::linear};
  EXPECT_DOUBLE_EQ(lr_at(c, 0), 0.1);   // (0 + 1) / 10
  EXPECT_DOUBLE_EQ(lr_at(c, 4), 0.5);
  EXPECT_DOUBLE_EQ(lr_at(c, 9), 1.0);   // warmup ends at max
  EXPECT_DOUBLE_EQ(lr_at(c, 10), 1.0);  // cosine starts at max
  EXPECT_NEAR(lr_at(c, 60), 0.55, 1e-12);  // halfway: (max + min) / 2
  EXPECT_NEAR(lr_at(c, 85), 0.1 + 0.45 * (1 + std::cos(0.75 * M_PI)), 1e-12);
  EXPECT_GT(lr_at(c, 109), 0.1);
  EXPECT_LT(lr_at(c, 109), 0.101);
  EXPECT_DOUBLE_EQ(lr_at(c, 110), 0.1);
  EXPECT_DOUBLE_EQ(lr_at(c, 10000), 0.1);
  // Monotone non-increasing after warmup.
  for (int64_t s = 10; s < 120; ++s) EXPECT_LE(lr_at(c, s + 1), lr_at(c, s)) << "step " << s;
  c.warmup_steps = 0;
  EXPECT_DOUBLE_EQ(lr_at(c, 0), 1.0);
}

TEST(LrSchedule, WarmupStableDecayBoundaries) {
  LrScheduleConfig c{LrScheduleKind::wsd, 1.0, 0.1, 10, 110, 20, DecayShape::linear};
  EXPECT_DOUBLE_EQ(lr_at(c, 0), 0.1);
  EXPECT_DOUBLE_EQ(lr_at(c, 10), 1.0);
  EXPECT_DOUBLE_EQ(lr_at(c, 89), 1.0);   // still stable
  EXPECT_DOUBLE_EQ(lr_at(c, 90), 1.0);   // decay starts (r = 0)
  EXPECT_NEAR(lr_at(c, 95), 0.775, 1e-12);
  EXPECT_NEAR(lr_at(c, 100), 0.55, 1e-12);
  EXPECT_NEAR(lr_at(c, 109), 1.0 - 0.9 * 19.0 / 20.0, 1e-12);
  EXPECT_DOUBLE_EQ(lr_at(c, 110), 0.1);
  c.decay_shape = DecayShape::cosine;
  EXPECT_NEAR(lr_at(c, 95), 0.1 + 0.45 * (1 + std::cos(M_PI / 4)), 1e-12);
  EXPECT_NEAR(lr_at(c, 100), 0.55, 1e-12);
  EXPECT_DOUBLE_EQ(lr_at(c, 89), 1.0);
  EXPECT_DOUBLE_EQ(lr_at(c, 200), 0.1);
}

TEST(LrSchedule, ConstantAndBadSettings) {
  LrScheduleConfig c{LrScheduleKind::constant, 0.5, 0.0, 4, 0, 0, DecayShape::linear};
  EXPECT_DOUBLE_EQ(lr_at(c, 1), 0.25);
  EXPECT_DOUBLE_EQ(lr_at(c, 1000000), 0.5);
  LrScheduleConfig w{LrScheduleKind::wsd, 1.0, 0.1, 10, 110, 101, DecayShape::linear};
  EXPECT_THROW(lr_at(w, 0), Error);  // decay longer than what follows warmup
  LrScheduleConfig m{LrScheduleKind::cosine, 1.0, 2.0, 0, 10, 0, DecayShape::linear};
  EXPECT_THROW(lr_at(m, 0), Error);  // min_lr > max_lr
  EXPECT_EQ(parse_schedule_kind("wsd"), LrScheduleKind::wsd);
  EXPECT_EQ(parse_decay_shape("cosine"), DecayShape::cosine);
  try {
    parse_schedule_kind("linear_warmup");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("linear_warmup"), std::string::npos) << e.what();
  }
}

// step(lr, s) reads each grad as g * s (how the trainer applies clipping): to the bit what
// replacing the grads by mul_scalar(g, s) (clip_grad_norm) and then step(lr) gives, in f32 and
// f64, over two steps with different factors; s = 1 is step(lr). A factor that is not finite and
// positive is refused naming it.
TEST(AdamW, GradScaleEqualsScalingTheGradsFirst) {
  for (DType dt : {DType::f32, DType::f64}) {
    std::vector<double> w(257), g(257);
    uint64_t x = 12345;
    auto next = [&x] {
      x = x * 6364136223846793005ULL + 1442695040888963407ULL;
      return double(x >> 11) / double(1ULL << 53) * 2.0 - 1.0;
    };
    for (double& v : w) v = next();
    Tensor p1 = Tensor::from_vector<double>(w, {257}).to(dt), p2 = p1.clone(), p3 = p1.clone();
    for (Tensor* p : {&p1, &p2, &p3}) p->set_requires_grad(true);
    AdamW a({{"w", p1}}), b({{"w", p2}}), c({{"w", p3}});
    for (const double s : {0.37, 1.0, 0.0625 / 3.0}) {
      for (double& v : g) v = 10.0 * next();
      const Tensor gt = Tensor::from_vector<double>(g, {257}).to(dt);
      p1.set_grad(mul_scalar(gt, s));
      p2.set_grad(gt.clone());
      p3.set_grad(gt.clone());
      a.step(1e-2);
      b.step(1e-2, s);
      if (s == 1.0) {
        c.step(1e-2);
      } else {
        p3.set_grad(mul_scalar(gt, s));
        c.step(1e-2, 1.0);
      }
    }
    EXPECT_EQ(p2.to_double_vector(), p1.to_double_vector()) << dtype_name(dt);
    EXPECT_EQ(b.exp_avg().at("w").to_double_vector(), a.exp_avg().at("w").to_double_vector()) << dtype_name(dt);
    EXPECT_EQ(b.exp_avg_sq().at("w").to_double_vector(), a.exp_avg_sq().at("w").to_double_vector()) << dtype_name(dt);
    EXPECT_EQ(p3.to_double_vector(), p1.to_double_vector()) << dtype_name(dt) << ": s = 1 and step(lr) agree";
    for (const double bad : {0.0, -1.0, std::nan(""), HUGE_VAL}) {
      try {
        b.step(1e-2, bad);
        ADD_FAILURE() << "grad_scale " << bad << " accepted";
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("grad_scale"), std::string::npos) << e.what();
      }
    }
  }
}

TEST(ClipGradNorm, ClipScaleIsTheFactorClipGradNormApplies) {
  EXPECT_EQ(clip_scale(13.0, 100.0), 1.0);  // under the bound
  EXPECT_EQ(clip_scale(13.0, 0.0), 1.0);    // disabled
  EXPECT_EQ(clip_scale(std::nan(""), 1.0), 1.0);
  EXPECT_EQ(clip_scale(HUGE_VAL, 1.0), 1.0);  // non-finite: left to the caller
  EXPECT_DOUBLE_EQ(clip_scale(13.0, 6.5), 6.5 / (13.0 + 1e-6));
}

TEST(ClipGradNorm, ScalesToMaxNormAndReturnsPreClipNorm) {
  Tensor a = param({0, 0}, {2}, "a"), b = param({0}, {1}, "b"), c = param({5}, {1}, "c");
  set_grad(a, {3.0, 4.0});
  set_grad(b, {12.0});  // c has no grad: skipped
  std::vector<Tensor> ps{a, b, c};
  EXPECT_DOUBLE_EQ(global_grad_norm(ps), 13.0);
  EXPECT_DOUBLE_EQ(clip_grad_norm(ps, 100.0), 13.0);  // under the bound: unchanged
  EXPECT_EQ(a.grad().to_vector<double>(), (std::vector<double>{3.0, 4.0}));
  EXPECT_DOUBLE_EQ(clip_grad_norm(ps, 0.0), 13.0);  // disabled
  EXPECT_DOUBLE_EQ(clip_grad_norm(ps, 6.5), 13.0);
  const double s = 6.5 / (13.0 + 1e-6);
  EXPECT_NEAR(a.grad().to_vector<double>()[0], 3.0 * s, 1e-15);
  EXPECT_NEAR(b.grad().to_vector<double>()[0], 12.0 * s, 1e-15);
  EXPECT_NEAR(global_grad_norm(ps), 6.5, 1e-6);
  EXPECT_FALSE(c.grad().defined());
}

TEST(ClipGradNorm, SharedGradBufferIsScaledOnceAndNanIsReported) {
  Tensor a = param({0, 0}, {2}, "a"), b = param({0, 0}, {2}, "b");
  Tensor g = Tensor::from_vector<double>({3.0, 4.0}, {2});
  a.set_grad(g);
  b.set_grad(g);  // same buffer, as an op's backward may hand to two inputs
  EXPECT_NEAR(clip_grad_norm({a, b}, 1.0), std::sqrt(50.0), 1e-12);
  EXPECT_NEAR(a.grad().to_vector<double>()[0], 3.0 / (std::sqrt(50.0) + 1e-6), 1e-12);
  EXPECT_NEAR(b.grad().to_vector<double>()[1], 4.0 / (std::sqrt(50.0) + 1e-6), 1e-12);
  Tensor f = param({0}, {1}, "f");
  set_grad(f, {std::nan("")});
  EXPECT_TRUE(std::isnan(clip_grad_norm({a, f}, 1.0)));
  EXPECT_TRUE(std::isnan(f.grad().to_vector<double>()[0]));  // left for the caller to handle
}
