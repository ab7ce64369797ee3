// Device routing of the plain top-k strategies and S-BASE (layers/moe/device_routing.h) under the emulation:
// a MoeLayer on the device that routes there against the same layer on the CPU, and against the
// same device layer with the host routing forced (set_device_routing(false)). Expected: the same
// expert ids and kept sets (inputs are checked for a top-k margin, so fp32 rounding of the router
// GEMM cannot flip a choice), gates and extra losses within 1e-5 of the largest entry (fp32
// router math); output and every grad within 2e-2 of the CPU layer's (the experts multiply in
// bf16 on the device) and, with fp32 activations, output, input grad and router grad within 1e-5
// of the host-routed device layer's (same data-path kernels). S-BASE (sinkhorn) in training and
// eval the same way; in training its inputs are checked for a margin in the host plan's top-k and
// the device plan must run as many Sinkhorn iterations as the host's.
// Ineligible cases keep the host selection: aux_loss global (router on the device, its logits and
// scores copied down), bip in training under router jitter (router on the host too).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/cuda/ops/cuda_backend.h"
#include "core/ops.h"
#include "core/rng.h"
#include "layers/moe/balance/sinkhorn_plan.h"
#include "layers/moe/balance/topk_routing.h"
#include "layers/moe/moe_layer.h"
#include "tests/cuda/device_test_util.h"

namespace moe {
namespace {

constexpr double kF32Rel = 1e-5;

using test::near_rel_max;
using test::random_host;
using test::first_usable_seed;
using test::test_seed;
using test::kth_gap;
using test::sinkhorn_plan_margin;

struct RouteCase {
  std::string name, strategy;
  std::string score = "softmax";
  bool renormalize = true;
  double gate_scale = 1.0;
  double z_loss = 0;
  std::string aux_variant = "micro_batch";
  std::optional<double> capacity = std::nullopt;
  std::string drop_policy = "";  // empty: the config's default (drops by score)
  int bias_updates = 0;  // loss_free: balancer updates (with skewed loads) before the forward
  DType act = DType::f32;
  bool expect_device = true;
  bool eval = false;           // forward in eval mode (sinkhorn: top-k of the scores)
  int top_k = 2;
  double temperature = 1.0;    // sinkhorn xi
  int max_iters = 100;
  double jitter = 0;           // router jitter (training routes on the host then)
};

ModelConfig route_config(const RouteCase& c) {
  ModelConfig m = test::small_moe_config(c.strategy);
  m.moe.capacity_factor = c.capacity;
  if (!c.drop_policy.empty()) m.moe.drop_policy = c.drop_policy;
  m.moe.score_function = c.score;
  m.moe.renormalize_gates = c.renormalize;
  m.moe.gate_scale = c.gate_scale;
  m.moe.z_loss_coef = c.z_loss;
  m.moe.balance.aux_variant = c.aux_variant;
  m.moe.balance.bias_update_rate = 0.03;
  m.moe.top_k = c.top_k;
  m.moe.balance.sinkhorn_temperature = c.temperature;
  m.moe.balance.sinkhorn_max_iters = c.max_iters;
  m.moe.jitter = c.jitter;
  return m;
}

using test::layer_loss;

// The top-k margin (test::kth_gap) of scores + bias of the CPU layer's router on x.
double topk_margin(MoeLayer& cpu, const Tensor& x, int64_t k) {
  NoGradGuard ng;
  const int64_t T = x.size(0) * x.size(1);
  Tensor logits = matmul(x.reshape({T, x.size(2)}), cpu.router().weight().transpose(0, 1));
  Tensor s = cpu.router().score_function() == ScoreFunction::sigmoid ? sigmoid(logits) : softmax(logits, 1);
  std::vector<double> sv = s.to_double_vector(), b = cpu.balancer().state_vector();
  const int64_t E = s.size(1);
  if (!b.empty())
    for (int64_t t = 0; t < T; ++t)
      for (int64_t e = 0; e < E; ++e) sv[size_t(t * E + e)] += b[size_t(e)];
  return kth_gap(sv, T, E, k);
}

double sinkhorn_margin(MoeLayer& cpu, const Tensor& x, const MoeConfig& m) {
  NoGradGuard ng;
  const int64_t T = x.size(0) * x.size(1);
  Tensor logits = matmul(x.reshape({T, x.size(2)}), cpu.router().weight().transpose(0, 1));
  return sinkhorn_plan_margin(logits, m.balance, m.top_k);
}

// The experts plain top-k of the CPU layer's scores would choose (token-major).
std::vector<int64_t> plain_topk_experts(MoeLayer& cpu, const Tensor& x, int64_t k) {
  NoGradGuard ng;
  const int64_t T = x.size(0) * x.size(1);
  Tensor logits = matmul(x.reshape({T, x.size(2)}), cpu.router().weight().transpose(0, 1));
  Tensor s = cpu.router().score_function() == ScoreFunction::sigmoid ? sigmoid(logits) : softmax(logits, 1);
  return select_topk(s, k, "test").expert;
}

// The experts top-k of the host Sinkhorn plan of the CPU layer's router would choose (token-major).
std::vector<int64_t> plan_topk_experts(MoeLayer& cpu, const Tensor& x, const MoeConfig& m) {
  NoGradGuard ng;
  const int64_t T = x.size(0) * x.size(1);
  Tensor logits = matmul(x.reshape({T, x.size(2)}), cpu.router().weight().transpose(0, 1));
  const BalanceConfig& b = m.balance;
  const SinkhornPlan plan = sinkhorn_plan(logits, b.sinkhorn_temperature, b.sinkhorn_max_iters, b.sinkhorn_tol);
  return select_topk(Tensor::from_vector(plan.log_plan, {T, plan.experts}), m.top_k, "test").expert;
}

struct Run {
  Tensor out, xgrad;
  std::vector<std::pair<std::string, Tensor>> grads;
};

Run run_layer(MoeLayer& layer, const Tensor& x, const Tensor& R, Device dev, DType act) {
  Tensor xl = dev == Device::cuda ? x.detach().to(act).to(Device::cuda).detach() : x.detach().clone();
  xl.set_requires_grad(true);
  Run r;
  r.out = layer.forward(xl);
  layer_loss(layer, r.out, R).backward();
  r.xgrad = xl.grad();
  for (const auto& [name, p] : layer.named_parameters()) r.grads.emplace_back(name, p.grad());
  return r;
}

void expect_same_routing(MoeLayer& got, MoeLayer& want, const std::string& what) {
  SCOPED_TRACE(what);
  EXPECT_EQ(got.last_routing().token.to_vector<int64_t>(), want.last_routing().token.to_vector<int64_t>());
  EXPECT_EQ(got.last_routing().expert.to_vector<int64_t>(), want.last_routing().expert.to_vector<int64_t>());
  EXPECT_EQ(got.last_stats().dropped, want.last_stats().dropped);
  EXPECT_EQ(got.last_stats().load, want.last_stats().load);
  EXPECT_TRUE(near_rel_max(got.last_routing().gate, want.last_routing().gate, kF32Rel, "gate"));
  EXPECT_TRUE(near_rel_max(got.last_routing().score, want.last_routing().score, kF32Rel, "selection score"));
  EXPECT_NEAR(got.last_stats().router_entropy, want.last_stats().router_entropy,
              kF32Rel * std::max(1.0, std::abs(want.last_stats().router_entropy)));
  ASSERT_EQ(got.last_stats().mean_logit.size(), want.last_stats().mean_logit.size());
  for (size_t j = 0; j < want.last_stats().mean_logit.size(); ++j)
    EXPECT_NEAR(got.last_stats().mean_logit[j], want.last_stats().mean_logit[j],
                kF32Rel * std::max(1.0, std::abs(want.last_stats().mean_logit[j])))
        << "mean logit of expert " << j;
  const std::vector<ExtraLoss> gl = got.extra_losses(), wl = want.extra_losses();
  ASSERT_EQ(gl.size(), wl.size());
  for (size_t i = 0; i < wl.size(); ++i) {
    const ExtraLoss &g = gl[i], &w = wl[i];
    EXPECT_EQ(g.name, w.name);
    EXPECT_EQ(g.scaled.device(), Device::cpu) << w.name;
    EXPECT_NEAR(g.unscaled, w.unscaled, kF32Rel * std::abs(w.unscaled)) << w.name;
    EXPECT_NEAR(g.scaled.item_double(), w.scaled.item_double(), kF32Rel * std::abs(w.scaled.item_double())) << w.name;
  }
}

// rel for the expert weights' grads; router_rel for the output and the input grad (what the
// routing math reaches besides the bf16 experts); router_grad_rel for the router weight's grad.
// The input grad of the tokens in `bf16_tokens` (test::tokens_with_unequal_gates) within rel.
void expect_near_run(const Run& got, const Run& want, double rel, double router_rel, double router_grad_rel,
                     const std::vector<bool>& bf16_tokens, const std::string& what) {
  SCOPED_TRACE(what);
  EXPECT_TRUE(near_rel_max(got.out, want.out, router_rel, "output"));
  EXPECT_TRUE(test::near_rel_max_rows(got.xgrad, want.xgrad, bf16_tokens, router_rel, rel, "input grad"));
  ASSERT_EQ(got.grads.size(), want.grads.size());
  for (size_t i = 0; i < want.grads.size(); ++i) {
    EXPECT_EQ(got.grads[i].first, want.grads[i].first);
    ASSERT_TRUE(got.grads[i].second.defined()) << got.grads[i].first;
    EXPECT_EQ(got.grads[i].second.dtype(), DType::f32) << got.grads[i].first;
    const bool router = want.grads[i].first.rfind("router", 0) == 0;
    EXPECT_TRUE(near_rel_max(got.grads[i].second, want.grads[i].second, router ? router_grad_rel : rel,
                             want.grads[i].first + " grad"));
  }
}

class MoeDeviceRouting : public ::testing::Test {
 protected:
  void SetUp() override { cuda::install_backend("MoeDeviceRouting"); }
};

void run_case(const RouteCase& c) {
  SCOPED_TRACE(c.name);
  const ModelConfig cfg = route_config(c);
  Philox r1(test_seed(1234), 0), r2(test_seed(1234), 0), r3(test_seed(1234), 0);
  MoeLayer cpu(cfg, 0, r1), dev(cfg, 0, r2), dev_host(cfg, 0, r3);
  // bf16-exact masters: the device experts' bf16 conversion is then exact (as moe_device_test).
  for (MoeLayer* l : {&cpu, &dev, &dev_host}) {
    NoGradGuard ng;
    for (Tensor p : l->parameters()) p.copy_(p.to(DType::bf16));
  }
  const std::vector<double> skew = {11, 0, 4, 2, 1};
  for (int i = 0; i < c.bias_updates; ++i)
    for (MoeLayer* l : {&cpu, &dev, &dev_host}) l->balancer().update(skew);
  if (c.bias_updates > 0) {
    std::vector<double> b = cpu.balancer().state_vector();
    ASSERT_FALSE(b.empty());
    EXPECT_GT(*std::max_element(b.begin(), b.end()), 0.0);
  }
  dev.to(Device::cuda);
  dev_host.to(Device::cuda);
  dev_host.set_device_routing(false);
  if (c.eval)
    for (MoeLayer* l : {&cpu, &dev, &dev_host}) l->eval();

  const bool by_plan = c.strategy == "sinkhorn" && !c.eval;
  auto input = [](uint64_t s) { return random_host({2, 7, 40}, s).to(DType::bf16).to(DType::f32); };
  // A plan step's input must also have the plan change a choice (else the case would not tell the
  // plan from top-k of the scores): drawn for, since a fresh draw need not (seen at k = 1, xi 0.05).
  const auto [usable, found] = first_usable_seed(31, [&](uint64_t s) {
    Tensor xs = input(s);
    if (!by_plan) return topk_margin(cpu, xs, cfg.moe.top_k) > 1e-4;
    return sinkhorn_margin(cpu, xs, cfg.moe) > 1e-4 &&
           plan_topk_experts(cpu, xs, cfg.moe) != plain_topk_experts(cpu, xs, cfg.moe.top_k);
  });
  ASSERT_TRUE(found) << "every input drawn had a near tie in the top-k" << (by_plan ? ", or a plan that changes no choice" : "");
  Tensor x = input(usable), R = random_host({2, 7, 40}, usable + 1);

  Run h = run_layer(cpu, x, R, Device::cpu, DType::f32);
  Run d = run_layer(dev, x, R, Device::cuda, c.act);
  Run dh = run_layer(dev_host, x, R, Device::cuda, c.act);
  EXPECT_EQ(dev.last_routed_on_device(), c.expect_device);
  // The router runs on the device unless a jitter draw needs the host (selection on either side).
  EXPECT_EQ(dev.last_router_on_device(), c.eval || c.jitter == 0);
  EXPECT_FALSE(dev_host.last_routed_on_device());
  EXPECT_FALSE(dev_host.last_router_on_device());
  EXPECT_FALSE(cpu.last_routed_on_device());
  ASSERT_EQ(d.out.device(), Device::cuda);
  ASSERT_EQ(d.out.dtype(), c.act);
  if (c.capacity) {
    EXPECT_GT(cpu.last_stats().dropped, 0) << "the capacity case should drop assignments";
  }
  for (const auto& [name, g] : d.grads) EXPECT_EQ(g.device(), Device::cuda) << name;

  if (by_plan) {  // the plan must change some choice, or the case would not tell it from top-k of s
    EXPECT_NE(dev.last_routing().expert.to_vector<int64_t>(), plain_topk_experts(cpu, x, cfg.moe.top_k))
        << "the Sinkhorn plan chose as top-k of the scores: the case does not exercise the plan";
  }
  expect_same_routing(dev, cpu, "device layer vs cpu layer");
  expect_same_routing(dev, dev_host, "device routing vs host routing, both on the device");
  // Against the CPU layer: the device experts' bf16 rounding dominates (2e-2). Against the host
  // routing on the device (the same data-path kernels): only the routing math differs, so with
  // fp32 activations the output, input grad and router grad agree to fp32 rounding (measured
  // <= 2.3e-7 under the emulation; expert grads bit-equal there), except the input grad of a
  // token whose gates are not bit-equal: the experts take gate * dy in bf16 (tokens_with_unequal_gates).
  const double rel = test::bf16_experts_rel(c.act);
  const int64_t T = x.size(0) * x.size(1);
  expect_near_run(d, h, rel, rel, test::bf16_router_grad_rel(c.act), std::vector<bool>(size_t(T), true),
                  "device layer vs cpu layer");
  const double host_rel = c.act == DType::f32 ? kF32Rel : rel;
  expect_near_run(d, dh, rel, host_rel, host_rel,
                  test::tokens_with_unequal_gates(dev.last_routing(), dev_host.last_routing(), T),
                  "device routing vs host routing, both on the device");
}

TEST_F(MoeDeviceRouting, NoneSoftmaxWithZLoss) {
  run_case({"none softmax z", "none", "softmax", true, 1.0, 1e-2});
}
TEST_F(MoeDeviceRouting, NoneSigmoidNoRenormalize) {
  run_case({"none sigmoid, no renormalize", "none", "sigmoid", false});
}
TEST_F(MoeDeviceRouting, AuxMicroBatchScaledGatesWithZLoss) {
  run_case({"aux micro_batch, scale 2.5, z", "aux_loss", "softmax", true, 2.5, 1e-2});
}
TEST_F(MoeDeviceRouting, AuxMicroBatchNoRenormalizeWithDrops) {
  RouteCase c{"aux micro_batch, no renormalize, capacity 0.7", "aux_loss", "softmax", false, 1.0};
  c.capacity = 0.7;
  run_case(c);
}
TEST_F(MoeDeviceRouting, AuxPerSequenceSigmoid) {
  RouteCase c{"aux per_sequence sigmoid", "aux_loss", "sigmoid", true, 1.5, 1e-2};
  c.aux_variant = "per_sequence";
  run_case(c);
}
TEST_F(MoeDeviceRouting, AuxMicroBatchBf16Activations) {
  RouteCase c{"aux micro_batch bf16", "aux_loss"};
  c.act = DType::bf16;
  run_case(c);
}
TEST_F(MoeDeviceRouting, LossFreeSigmoidWithBiasAndZLoss) {
  RouteCase c{"loss_free sigmoid, bias after 3 updates, z", "loss_free", "sigmoid", true, 1.0, 1e-2};
  c.bias_updates = 3;
  run_case(c);
}
TEST_F(MoeDeviceRouting, AuxGlobalStaysOnTheHost) {
  RouteCase c{"aux global", "aux_loss"};
  c.aux_variant = "global";
  c.expect_device = false;
  run_case(c);
}
// BIP routes on the device (bip_quantile_device_routing_test.cpp), but not in training under
// router jitter (drawn from the layer's host RNG): the host routing, as the CPU layer's.
TEST_F(MoeDeviceRouting, BipUnderJitterStaysOnTheHost) {
  RouteCase c{"bip under jitter", "bip"};
  c.jitter = 0.01;
  c.expect_device = false;
  run_case(c);
}
// S-BASE: k > 1 gates are softmax(logits), not renormalized, times gate_scale (the sigmoid router's
// case computes that softmax besides the scores); k = 1 gates are sigmoid(logits).
RouteCase sbase_case(const std::string& name, const std::string& score, int top_k, bool eval, double z_loss = 0) {
  RouteCase c{name, "sinkhorn", score, true, 1.0, z_loss};
  c.top_k = top_k;
  c.eval = eval;
  return c;
}
TEST_F(MoeDeviceRouting, SinkhornTrainingSoftmaxWithZLoss) {
  RouteCase c = sbase_case("sinkhorn training softmax, scale 1.5, z", "softmax", 2, false, 1e-2);
  c.gate_scale = 1.5;
  run_case(c);
}
TEST_F(MoeDeviceRouting, SinkhornTrainingSigmoidRouter) {
  run_case(sbase_case("sinkhorn training, sigmoid router", "sigmoid", 2, false));
}
// The drops go by position, as in SsrNullDeviceRouting's k = 1, xi 0.05 case: the plan saturates
// and the selection scores T * Pi of an expert's tokens tie up to ulps, so dropping by score would
// pick which tied token to drop by rounding (seen on a fresh draw, MOE_TEST_SEED
// 9886674968432313689: the device dropped a token the host kept). Drops by score are the
// AuxMicroBatchNoRenormalizeWithDrops case's.
TEST_F(MoeDeviceRouting, SinkhornTrainingTop1SmallTemperatureWithDrops) {
  RouteCase c = sbase_case("sinkhorn training k = 1, xi 0.05, capacity 0.7 by position", "softmax", 1, false);
  c.temperature = 0.05;
  c.max_iters = 20;
  c.capacity = 0.7;
  c.drop_policy = "position";
  run_case(c);
}
TEST_F(MoeDeviceRouting, SinkhornTrainingBf16Activations) {
  RouteCase c = sbase_case("sinkhorn training bf16", "softmax", 2, false);
  c.act = DType::bf16;
  run_case(c);
}
TEST_F(MoeDeviceRouting, SinkhornEvalRanksTheScores) {
  run_case(sbase_case("sinkhorn eval, sigmoid router, z", "sigmoid", 2, true, 1e-2));
}
TEST_F(MoeDeviceRouting, SinkhornEvalTop1) { run_case(sbase_case("sinkhorn eval k = 1", "softmax", 1, true)); }

// The backend's top-k with a bias against the host select_topk on shifted_scores, with exact
// ties in s + b (ties go to the lower index on both) and a row whose bias reorders it.
TEST_F(MoeDeviceRouting, BiasedTopkMatchesHostSelection) {
  const int64_t T = 7, E = 9, k = 3;
  Tensor s = random_host({T, E}, 41, 0.5);
  std::vector<float> sv = s.to_vector<float>();
  std::vector<float> bias(static_cast<size_t>(E));
  for (int64_t e = 0; e < E; ++e) bias[size_t(e)] = 0.125f * float(e % 4) - 0.25f;
  // Exact ties after the shift: row 2 and row 5 hold equal values at several experts.
  for (int64_t e = 0; e < E; ++e) sv[size_t(2 * E + e)] = 0.5f - bias[size_t(e)];
  for (int64_t e = 0; e < E; e += 2) sv[size_t(5 * E + e)] = 1.0f - bias[size_t(e)];
  s = Tensor::from_vector(sv, {T, E});
  Selection want = select_topk(shifted_scores(s, bias, +1.0), k, "test");
  CudaBackend& be = cuda_backend("test");
  auto [idx, val] = be.router_topk(s.to(Device::cuda), Tensor::from_vector(bias, {E}).to(Device::cuda), k);
  std::vector<int32_t> got = idx.to_vector<int32_t>();
  std::vector<float> gv = val.to_vector<float>();
  for (size_t a = 0; a < want.expert.size(); ++a) {
    EXPECT_EQ(int64_t(got[a]), want.expert[a]) << "slot " << a;
    EXPECT_EQ(double(gv[a]), want.score[a]) << "slot " << a;  // the same fp32 sum s + b
  }
  // Without a bias: plain top-k of s.
  Selection plain = select_topk(s, k, "test");
  auto [idx0, val0] = be.router_topk(s.to(Device::cuda), Tensor(), k);
  std::vector<int32_t> got0 = idx0.to_vector<int32_t>();
  for (size_t a = 0; a < plain.expert.size(); ++a) EXPECT_EQ(int64_t(got0[a]), plain.expert[a]) << "slot " << a;
}

// row_normalize (the aux probabilities of sigmoid scores) and its backward against the host
// div(x, sum(x, 1, keepdim)) with autograd: fp32, 1e-6 of the largest entry.
TEST_F(MoeDeviceRouting, RowNormalizeMatchesHost) {
  const int64_t T = 7, E = 37;
  Tensor x = sigmoid(random_host({T, E}, 43)), gy = random_host({T, E}, 44);
  Tensor xh = x.detach().clone(), xd = x.detach().to(Device::cuda).detach();
  xh.set_requires_grad(true);
  xd.set_requires_grad(true);
  // One forward and backward at a time: a backward runs (and clears) the whole tape.
  Tensor yh = div(xh, sum(xh, {1}, true));
  sum_all(mul(yh, gy)).backward();
  Tensor yd = cuda_backend("test").row_normalize(xd);
  yd.backward(gy.to(Device::cuda));
  EXPECT_TRUE(near_rel_max(yd, yh, 1e-6, "row_normalize"));
  EXPECT_TRUE(near_rel_max(xd.grad(), xh.grad(), 1e-6, "row_normalize backward"));
}

// Router jitter draws from the layer's host RNG: a training forward with jitter routes on the
// host, an eval forward (no jitter) on the device; and eval under NoGradGuard records nothing.
TEST_F(MoeDeviceRouting, JitterInTrainingRoutesOnTheHost) {
  ModelConfig cfg = route_config({"jitter", "aux_loss"});
  cfg.moe.jitter = 0.01;
  Philox rng(test_seed(1234), 0);
  MoeLayer layer(cfg, 0, rng);
  layer.to(Device::cuda);
  Tensor x = random_host({2, 7, 40}, 31).to(Device::cuda);
  layer.forward(x);
  EXPECT_FALSE(layer.last_routed_on_device());
  layer.eval();
  {
    NoGradGuard ng;
    Tensor out = layer.forward(x);
    EXPECT_TRUE(layer.last_routed_on_device());
    EXPECT_FALSE(out.requires_grad());
    EXPECT_EQ(layer.last_routing().expert.numel(), 2 * 7 * 2);
  }
}

// NaN scores are refused with the host strategies' message (select_topk's).
TEST_F(MoeDeviceRouting, NanScoresAreRefused) {
  Philox rng(test_seed(1234), 0);
  MoeLayer layer(route_config({"nan", "none"}), 0, rng);
  {
    NoGradGuard ng;
    Tensor w = layer.router().weight();
    w.fill_(std::nan(""));
  }
  layer.to(Device::cuda);
  Tensor x = random_host({2, 7, 40}, 31).to(Device::cuda);
  try {
    layer.forward(x);
    ADD_FAILURE() << "expected a throw";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("router scores contain NaN"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace moe
