// Device routing of "ssr" (Selective Sinkhorn) and "null_experts" (AdaMoE) under the emulation.
// Three copies of one MoeLayer: on the CPU, on the device routing there, and on the device with
// the host routing forced (set_device_routing(false)), stepped through the same inputs. Per step:
// the same token / expert ids (inputs checked for a selection margin: top-k of the scores, or of
// log Pi on SSR's plan steps, whose device plan must also run the host's iteration count), the
// same layer RNG offset (SSR's coin: one draw per training select, none in eval; each step's
// coin is predicted from a copy of the stream, and the mixed cases see both outcomes); gates,
// selection scores and extra losses within 1e-5 of the largest entry (fp32 router math); output
// and grads within 2e-2 of the CPU layer's (bf16 experts) and, with fp32 activations, output,
// input grad and router grad within 1e-5 of the host-routed device layer's.
// Ops: sinkhorn_plan's log d1 against the host plan's, scale_add_row and its backward.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/cuda/ops/cuda_backend.h"
#include "core/ops.h"
#include "core/rng.h"
#include "layers/moe/balance/sinkhorn_plan.h"
#include "layers/moe/balance/topk_routing.h"
#include "layers/moe/moe_layer.h"
#include "parallel/communicator.h"
#include "tests/cuda/device_test_util.h"

namespace moe {
namespace {

constexpr double kF32 = 1e-5, kBf16 = 1e-2;

// Rank 0 of a two-rank data-parallel group whose other rank holds the same batch: a sum is the
// local value doubled, a max the local value. Enough for null_experts (an all-reduce of loads).
class TwinRanks final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 2; }
  std::string backend() const override { return "twin"; }
  void all_reduce_sum(double* d, size_t n) override { std::transform(d, d + n, d, [](double v) { return 2 * v; }); }
  void all_reduce_sum(float* d, size_t n) override { std::transform(d, d + n, d, [](float v) { return 2 * v; }); }
  void all_reduce_max(double*, size_t) override {}
  std::vector<double> all_gather(const double* d, size_t n) override { return twice(d, n); }
  std::vector<uint64_t> all_gather(const uint64_t* d, size_t n) override { return twice(d, n); }
  void broadcast(double*, size_t, int) override {}
  void broadcast(uint64_t*, size_t, int) override {}
  void alltoallv(const float*, const std::vector<int64_t>&, float*, const std::vector<int64_t>&) override { fail(); }
  void alltoallv(const double*, const std::vector<int64_t>&, double*, const std::vector<int64_t>&) override {
    fail();
  }
  void barrier() override {}
  std::shared_ptr<Communicator> split(int, int) override { fail(); }

 private:
  template <class T>
  static std::vector<T> twice(const T* d, size_t n) {
    std::vector<T> v(d, d + n);
    v.insert(v.end(), d, d + n);
    return v;
  }
  [[noreturn]] static void fail() { MOE_FAIL("TwinRanks", "unexpected collective"); }
};

// A case: the layer's config (test::small_moe_config of the strategy, which each test varies:
// score function, k, gates, capacity, p, xi, null experts) and how it is run.
struct Case {
  std::string name;
  ModelConfig cfg;
  DType act = DType::f32;
  bool eval = false;
  int steps = 1;
  bool twin_ranks = false;  // null_experts: a two-rank batch communicator (scope global)
  bool all_null_token = false;  // null_experts: step 0's input has a token whose top-k are all null
  uint64_t seed = 31;
};

// SSR with p = 1 (every training step a plan step) unless a test sets it; null_experts with
// three null experts and aux coefficient 0.1.
Case make_case(const std::string& name, const std::string& strategy) {
  Case c{name, test::small_moe_config(strategy)};
  c.cfg.moe.balance.ssr_probability = 1.0;
  if (strategy == "null_experts") c.cfg.moe.balance.num_null_experts = 3;
  c.cfg.moe.balance.null_aux_alpha = 0.1;
  return c;
}

// The CPU layer's router logits of x [B, S, D] (fp32, no grad).
Tensor cpu_logits(MoeLayer& cpu, const Tensor& x) {
  NoGradGuard ng;
  return matmul(x.reshape({x.size(0) * x.size(1), x.size(2)}), cpu.router().weight().transpose(0, 1));
}

// Smallest gap over the rows of v [T, C] (row-major) between the k-th and (k+1)-th largest.
// The margin the device's fp32 rounding must not cross: of the scores' top-k, or on a plan step
// of the host plan's log Pi (and the device plan must stop at the host's iteration).
double selection_margin(MoeLayer& cpu, const Tensor& x, const MoeConfig& m, bool plan_step) {
  Tensor logits = cpu_logits(cpu, x);
  const int64_t T = logits.size(0), C = logits.size(1);
  if (!plan_step) {
    NoGradGuard ng;
    Tensor s = m.score_function == "sigmoid" ? sigmoid(logits) : softmax(logits, 1);
    return test::kth_gap(s.to_double_vector(), T, C, m.top_k);
  }
  return test::sinkhorn_plan_margin(logits, m.balance, m.top_k);
}

// Tokens of x whose top-k scores (select_topk, as the CPU layer routes) are all null experts
// (index >= E).
int64_t all_null_tokens(MoeLayer& cpu, const Tensor& x, const MoeConfig& m) {
  NoGradGuard ng;
  Tensor logits = cpu_logits(cpu, x);
  Tensor s = m.score_function == "sigmoid" ? sigmoid(logits) : softmax(logits, 1);
  const Selection sel = select_topk(s, m.top_k, "all_null_tokens");
  int64_t count = 0;
  for (size_t a = 0; a < sel.size(); a += size_t(m.top_k))
    count += std::all_of(sel.expert.begin() + ptrdiff_t(a), sel.expert.begin() + ptrdiff_t(a) + m.top_k,
                         [&](int64_t e) { return e >= m.num_experts; });
  return count;
}

struct Pass {
  Tensor out, xgrad;
  std::vector<Tensor> grads;  // named_parameters() order
};

Pass forward_backward(MoeLayer& layer, const Tensor& x, const Tensor& R, bool on_device, DType act) {
  for (Tensor p : layer.parameters()) p.zero_grad();
  Tensor xin = (on_device ? x.to(act).to(Device::cuda) : x.clone()).detach();
  xin.set_requires_grad(true);
  Pass p;
  p.out = layer.forward(xin);
  test::layer_loss(layer, p.out, R).backward();
  p.xgrad = xin.grad();
  for (const auto& np : layer.named_parameters()) p.grads.push_back(np.second.grad());
  return p;
}

// Decisions, gates, selection scores, statistics and losses of `got` against `want`.
void check_routing(MoeLayer& got, MoeLayer& want) {
  const Routing &g = got.last_routing(), &w = want.last_routing();
  EXPECT_EQ(g.token.to_vector<int64_t>(), w.token.to_vector<int64_t>());
  EXPECT_EQ(g.expert.to_vector<int64_t>(), w.expert.to_vector<int64_t>());
  EXPECT_LE(test::max_rel_diff(g.gate, w.gate), kF32) << "gate";
  EXPECT_LE(test::max_rel_diff(g.score, w.score), kF32) << "selection score";
  EXPECT_EQ(got.last_stats().load, want.last_stats().load);
  EXPECT_EQ(got.last_stats().dropped, want.last_stats().dropped);
  EXPECT_NEAR(got.last_stats().router_entropy, want.last_stats().router_entropy, 1e-5);
  const std::vector<ExtraLoss> gl = got.extra_losses(), wl = want.extra_losses();
  ASSERT_EQ(gl.size(), wl.size());
  for (size_t i = 0; i < wl.size(); ++i) {
    EXPECT_EQ(gl[i].name, wl[i].name);
    EXPECT_EQ(gl[i].scaled.device(), Device::cpu) << wl[i].name;
    EXPECT_NEAR(gl[i].unscaled, wl[i].unscaled, kF32 * std::abs(wl[i].unscaled)) << wl[i].name;
    EXPECT_NEAR(gl[i].scaled.item_double(), wl[i].scaled.item_double(), kF32 * std::abs(wl[i].scaled.item_double()))
        << wl[i].name;
  }
}

// Relative tolerances (to the largest entry) of one pass against another.
struct PassTol {
  double out, xgrad, router_grad, expert_grads;
};

void check_pass(const Pass& got, const Pass& want, MoeLayer& layer, const PassTol& tol) {
  EXPECT_LE(test::max_rel_diff(got.out, want.out), tol.out) << "output";
  EXPECT_LE(test::max_rel_diff(got.xgrad, want.xgrad), tol.xgrad) << "input grad";
  const auto named = layer.named_parameters();
  ASSERT_EQ(got.grads.size(), want.grads.size());
  for (size_t i = 0; i < named.size(); ++i) {
    const bool router = named[i].first.rfind("router", 0) == 0;
    EXPECT_LE(test::max_rel_diff(got.grads[i], want.grads[i]), router ? tol.router_grad : tol.expert_grads)
        << named[i].first << " grad";
  }
}

// What run() saw over its steps.
struct Seen {
  int plan_steps = 0, topk_steps = 0;
  int tokens_short = 0, tokens_none = 0;  // null_experts: fewer than k / no real experts
};

Seen run(const Case& c) {
  SCOPED_TRACE(c.name);
  const ModelConfig& cfg = c.cfg;
  // A fixed layer seed: the layer's selection stream derives from it, and the SSR cases are built
  // on its coin draws (below). The inputs are fresh (test::random_host).
  Philox r1(1234, 0), r2(1234, 0), r3(1234, 0);
  MoeLayer cpu(cfg, 0, r1), dev(cfg, 0, r2), dev_host(cfg, 0, r3);
  MoeLayer* all[] = {&cpu, &dev, &dev_host};
  for (MoeLayer* l : all) {
    NoGradGuard ng;  // bf16-exact masters: the device experts' bf16 copies are exact
    for (Tensor p : l->parameters()) p.copy_(p.to(DType::bf16));
    if (c.twin_ranks) l->balancer().set_communicator(std::make_shared<TwinRanks>());
    if (c.eval) l->eval();
  }
  dev.to(Device::cuda);
  dev_host.to(Device::cuda);
  dev_host.set_device_routing(false);
  Seen seen;
  const bool ssr = cfg.moe.balance.strategy == "ssr";
  const int64_t E = cfg.moe.num_experts, k = cfg.moe.top_k;
  for (int step = 0; step < c.steps; ++step) {
    SCOPED_TRACE("step " + std::to_string(step));
    const uint64_t offset = cpu.select_rng().offset();
    Philox coin = cpu.select_rng();
    const bool plan_step = ssr && !c.eval && coin.uniform() < cfg.moe.balance.ssr_probability;
    (plan_step ? seen.plan_steps : seen.topk_steps) += 1;
    auto input = [](uint64_t s) { return test::random_host({2, 7, 40}, s).to(DType::bf16).to(DType::f32); };
    const bool need_all_null = c.all_null_token && step == 0;
    const auto [seed, found] = test::first_usable_seed(c.seed + 2 * uint64_t(step), [&](uint64_t s) {
      const Tensor xs = input(s);
      return selection_margin(cpu, xs, cfg.moe, plan_step) > 1e-4 &&
             (!need_all_null || all_null_tokens(cpu, xs, cfg.moe) > 0);
    });
    if (!found) {
      ADD_FAILURE() << "every input drawn had a near tie in the selection"
                    << (need_all_null ? " or no token routed to null experts only" : "");
      return seen;
    }
    Tensor x = input(seed), R = test::random_host({2, 7, 40}, seed + 1);
    Pass h = forward_backward(cpu, x, R, false, DType::f32);
    Pass d = forward_backward(dev, x, R, true, c.act);
    Pass dh = forward_backward(dev_host, x, R, true, c.act);
    EXPECT_TRUE(dev.last_routed_on_device());
    EXPECT_FALSE(dev_host.last_routed_on_device());
    EXPECT_EQ(d.out.device(), Device::cuda);
    // The coin: one draw per training select on every path, none in eval.
    const uint64_t want_offset = ssr && !c.eval ? coin.offset() : offset;
    for (MoeLayer* l : all) EXPECT_EQ(l->select_rng().offset(), want_offset);
    {
      SCOPED_TRACE("device layer vs cpu layer");
      check_routing(dev, cpu);
    }
    {
      SCOPED_TRACE("device routing vs host routing on the device");
      check_routing(dev, dev_host);
    }
    const double tol = c.act == DType::f32 ? kBf16 : 2 * kBf16, tol_cpu = test::bf16_experts_rel(c.act);
    {
      SCOPED_TRACE("device layer vs cpu layer");
      // The router grad sums gate grads over the tokens, each from bf16 expert outputs (the CPU's
      // are fp32): relative to its largest entry it carries that rounding through cancellation
      // (measured up to 1.75e-2 over these seeds; a wrong gate or score grad is off by O(1)).
      check_pass(d, h, cpu, {tol_cpu, tol_cpu, 3 * tol, tol_cpu});
    }
    {
      SCOPED_TRACE("device routing vs host routing on the device");
      // With fp32 activations both paths agree to fp32 rounding, except the input grad: its expert
      // part multiplies gate x dy rounded to bf16, and gates one fp32 ulp apart (the two routers'
      // softmax: on an H100 the device router and the generic ops differ there, under the
      // emulation both use the host's expf) round to bf16 values one ulp apart (2.2e-3 measured).
      // The router grad carries those ulps through the same cancellation as above (1.2e-5 seen
      // on a plan step at xi 0.05, where the plan's exponents scale logit differences by 20).
      const double f32 = c.act == DType::f32 ? kF32 : tol;
      check_pass(d, dh, cpu, {f32, tol, 3 * f32, tol});
    }
    if (!ssr) {
      const std::vector<int64_t> per_token = test::choices_per_token(cpu.last_routing(), x.size(0) * x.size(1));
      for (int64_t e : cpu.last_routing().expert.to_vector<int64_t>()) EXPECT_LT(e, E);
      for (int64_t n : per_token) seen.tokens_short += n < k, seen.tokens_none += n == 0;
    }
  }
  return seen;
}

class SsrNullDeviceRouting : public ::testing::Test {
 protected:
  void SetUp() override { cuda::install_backend("SsrNullDeviceRouting"); }
};

// ---- ssr ----

// p = 0.1 over two training steps: the layer's stream draws 0.187 then 0.0087, so a top-k step
// then a plan step, with the same flips on the three layers; gate_scale 1.5 (plan gates and
// top-k gates both scaled), z-loss.
TEST_F(SsrNullDeviceRouting, SsrMixedCoinScaledWithZLoss) {
  Case c = make_case("ssr p 0.1, scale 1.5, z", "ssr");
  c.cfg.moe.balance.ssr_probability = 0.1;
  c.cfg.moe.gate_scale = 1.5;
  c.cfg.moe.z_loss_coef = 1e-2;
  c.steps = 2;
  const Seen s = run(c);
  EXPECT_EQ(s.plan_steps, 1);
  EXPECT_EQ(s.topk_steps, 1);
}

// A plan step with k = 1 (gate = gate_scale), small temperature with few iterations, sigmoid
// router, capacity drops. The drops go by position: at xi 0.05 the plan saturates, and the
// selection scores T * Pi of an expert's tokens tie up to an ulp or two (0.70087492 three times
// on the device, one ulp apart on the host, with a fresh seed), so dropping by score would pick
// which tied token to drop by rounding.
TEST_F(SsrNullDeviceRouting, SsrPlanTop1SmallTemperatureSigmoidWithDrops) {
  Case c = make_case("ssr plan k = 1, xi 0.05, sigmoid, capacity 0.7 by position, scale 2", "ssr");
  MoeConfig& m = c.cfg.moe;
  m.drop_policy = "position";
  m.score_function = "sigmoid";
  m.top_k = 1;
  m.balance.sinkhorn_temperature = 0.05;
  m.balance.sinkhorn_max_iters = 20;
  m.capacity_factor = 0.7;
  m.gate_scale = 2.0;
  EXPECT_EQ(run(c).plan_steps, 1);
}

// A plan step with k = 3 and temperature 0.5: softmax over three selected of x / xi + log d1.
TEST_F(SsrNullDeviceRouting, SsrPlanTop3Temperature) {
  Case c = make_case("ssr plan k = 3, xi 0.5", "ssr");
  c.cfg.moe.top_k = 3;
  c.cfg.moe.balance.sinkhorn_temperature = 0.5;
  EXPECT_EQ(run(c).plan_steps, 1);
}

TEST_F(SsrNullDeviceRouting, SsrPlanBf16Activations) {
  Case c = make_case("ssr plan, bf16 activations", "ssr");
  c.act = DType::bf16;
  EXPECT_EQ(run(c).plan_steps, 1);
}

// Eval: top-k of the scores whatever p (here 1), and no draw from the stream.
TEST_F(SsrNullDeviceRouting, SsrEvalDrawsNothing) {
  Case c = make_case("ssr eval, p 1", "ssr");
  c.eval = true;
  EXPECT_EQ(run(c).topk_steps, 1);
}

// ---- null_experts ----

// Tokens with fewer than k real experts (their gates renormalized over the real ones) and
// tokens whose choices are all null (no assignment); the aux loss over E + n_null experts.
TEST_F(SsrNullDeviceRouting, NullExpertsRenormalizedWithZLoss) {
  Case c = make_case("null_experts n 3, k 2, z", "null_experts");
  c.cfg.moe.z_loss_coef = 1e-2;
  c.steps = 2;
  c.all_null_token = true;  // drawn for: about one input in five has no such token
  const Seen s = run(c);
  EXPECT_GT(s.tokens_short, 0);
  EXPECT_GT(s.tokens_none, 0);
}

TEST_F(SsrNullDeviceRouting, NullExpertsK3NoRenormalizeScaled) {
  Case c = make_case("null_experts n 4, k 3, no renormalize, scale 2", "null_experts");
  MoeConfig& m = c.cfg.moe;
  m.balance.num_null_experts = 4;
  m.top_k = 3;
  m.renormalize_gates = false;
  m.gate_scale = 2.0;
  EXPECT_GT(run(c).tokens_short, 0);
}

TEST_F(SsrNullDeviceRouting, NullExpertsEvalBf16WithDrops) {
  Case c = make_case("null_experts eval, bf16, capacity 0.7", "null_experts");
  c.eval = true;
  c.act = DType::bf16;
  c.cfg.moe.capacity_factor = 0.7;
  EXPECT_GT(run(c).tokens_short, 0);
}

// The batch communicator only sums the loads of the aux loss (host vectors from the chosen ids):
// the device routes under it too, with the host's loss.
TEST_F(SsrNullDeviceRouting, NullExpertsUnderABatchCommunicator) {
  Case c = make_case("null_experts, two-rank batch communicator", "null_experts");
  c.twin_ranks = true;
  EXPECT_GT(run(c).tokens_short, 0);
}

// ---- ops ----

// sinkhorn_plan's log d1 against the host SinkhornPlan::log_d1 of the same logits (odd T, E).
TEST_F(SsrNullDeviceRouting, SinkhornPlanLogD1MatchesHost) {
  const int64_t T = 23, E = 7;
  for (double xi : {1.0, 0.1}) {
    SCOPED_TRACE("xi " + std::to_string(xi));
    Tensor x = test::random_host({T, E}, 51, 1.5);
    SinkhornPlan want = sinkhorn_plan(x, xi, 50, 1e-4);
    Tensor log_d1;
    int iters = -1;
    Tensor plan = cuda_backend("test").sinkhorn_plan(x.to(Device::cuda), xi, 50, 1e-4, &iters, &log_d1);
    EXPECT_EQ(iters, want.iterations);
    ASSERT_TRUE(log_d1.defined());
    EXPECT_EQ(log_d1.device(), Device::cuda);
    EXPECT_EQ(log_d1.dtype(), DType::f64);
    ASSERT_EQ(log_d1.numel(), E);
    EXPECT_LE(test::max_rel_diff(log_d1, Tensor::from_vector<double>(want.log_d1, {E})), kF32);
    std::vector<double> pi(want.log_plan.size());
    std::transform(want.log_plan.begin(), want.log_plan.end(), pi.begin(), [](double v) { return std::exp(v); });
    EXPECT_LE(test::max_rel_diff(plan, Tensor::from_vector<double>(pi, {T, E})), kF32);
  }
}

// scale_add_row and its backward against the host x * s + row (fp32, 1e-5 of the largest entry).
TEST_F(SsrNullDeviceRouting, ScaleAddRowMatchesHost) {
  const int64_t T = 9, E = 37;
  const double s = 1.0 / 0.3;
  Tensor x = test::random_host({T, E}, 61), gy = test::random_host({T, E}, 62);
  std::vector<double> row(static_cast<size_t>(E));
  for (int64_t e = 0; e < E; ++e) row[size_t(e)] = -0.75 + 0.125 * double(e % 11);
  std::vector<float> xv = x.to_vector<float>(), want(size_t(T * E)), gwant(size_t(T * E));
  const std::vector<float> gv = gy.to_vector<float>();
  for (int64_t i = 0; i < T * E; ++i) {
    want[size_t(i)] = float(double(xv[size_t(i)]) * s + row[size_t(i % E)]);
    gwant[size_t(i)] = float(double(gv[size_t(i)]) * s);
  }
  Tensor xd = x.to(Device::cuda).detach();
  xd.set_requires_grad(true);
  Tensor y = cuda_backend("test").scale_add_row(xd, s, Tensor::from_vector<double>(row, {E}).to(Device::cuda));
  EXPECT_EQ(y.dtype(), DType::f32);
  y.backward(gy.to(Device::cuda));
  EXPECT_LE(test::max_rel_diff(y, Tensor::from_vector(want, {T, E})), kF32);
  EXPECT_LE(test::max_rel_diff(xd.grad(), Tensor::from_vector(gwant, {T, E})), kF32);
}

}  // namespace
}  // namespace moe
