// expert_choice and top_p routing on the device under the emulation.
// Layers: a MoeLayer on the device that routes there against the same layer on the CPU and against
// the same device layer with the host routing forced (set_device_routing(false)), in training and
// in eval. Expected: the same tokens, experts (in the host's token-major order) and loads (inputs
// are checked for a margin: no expert's C-th and (C+1)-th token scores, no top-p running sum within
// 1e-4 of p, no near tie in a token's taken ranking, so the fp32 rounding of the router GEMM cannot
// change a decision); gates, selection scores and extra losses within 1e-5 of the largest entry
// (fp32); output and grads within 2e-2 of the CPU layer (bf16 experts) and, with fp32
// activations, output, input grad and router grad within 1e-5 of the host-routed device layer.
// Ops (selection_ops.cpp): expert_choice_select, top_p_select and routing_entropy against a CPU
// computation here (selections exactly, with planted ties; the entropy and its grad in fp32, 1e-5
// of the largest entry, against the host ops in double).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/cuda/ops/cuda_backend.h"
#include "core/ops.h"
#include "core/rng.h"
#include "layers/moe/balance/balancer.h"
#include "layers/moe/moe_layer.h"
#include "parallel/communicator.h"
#include "tests/cuda/device_test_util.h"

namespace moe {
namespace {

using test::random_host;
using test::first_usable_seed;
using test::test_seed;

class ChoiceTopPDeviceOps : public ::testing::Test {
 protected:
  void SetUp() override { cuda::install_backend("ChoiceTopPDeviceOps"); }
};

// Scores [T, E] with values on a grid of 1/16, so that many of them tie exactly.
std::vector<float> tied_values(int64_t T, int64_t E, uint64_t seed) {
  std::vector<float> v = random_host({T, E}, seed).to_vector<float>();
  for (float& x : v) x = std::round(x * 16.0f) / 16.0f;
  return v;
}

// (value, index) ranks before another: higher value, then lower index.
template <class V>
std::vector<int64_t> ranked_order(int64_t n, V value) {
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return value(a) > value(b); });
  return order;
}

TEST_F(ChoiceTopPDeviceOps, ExpertChoiceSelectMatchesCpu) {
  const int64_t T = 37, E = 6;
  const std::vector<float> s = tied_values(T, E, 51);
  const Tensor sd = Tensor::from_vector(s, {T, E}).to(Device::cuda);
  CudaBackend& be = cuda_backend("test");
  for (int64_t C : {int64_t(1), int64_t(8), T}) {
    std::vector<uint8_t> want(static_cast<size_t>(T * E), 0);
    for (int64_t e = 0; e < E; ++e) {
      std::vector<int64_t> order = ranked_order(T, [&](int64_t t) { return s[size_t(t * E + e)]; });
      for (int64_t r = 0; r < C; ++r) want[size_t(order[size_t(r)] * E + e)] = 1;
    }
    EXPECT_EQ(be.expert_choice_select(sd, C), want) << "capacity " << C;
  }
  EXPECT_THROW(be.expert_choice_select(sd, 0), Error);
  EXPECT_THROW(be.expert_choice_select(sd, T + 1), Error);
  EXPECT_THROW(be.expert_choice_select(Tensor::from_vector(s, {T, E}), 2), Error);  // on the host
}

TEST_F(ChoiceTopPDeviceOps, TopPSelectMatchesCpu) {
  const int64_t T = 29, E = 7;
  // Softmax of tied logits: rows with exactly tied scores, as the router makes them.
  const Tensor s = softmax(Tensor::from_vector(tied_values(T, E, 52), {T, E}), 1);
  const std::vector<float> sv = s.to_vector<float>();
  CudaBackend& be = cuda_backend("test");
  for (double p : {0.3, 0.8, 1.5}) {  // 1.5: every expert of every token
    std::vector<int32_t> want_ranked(static_cast<size_t>(T * E), -1), want_counts(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) {
      std::vector<int64_t> order = ranked_order(E, [&](int64_t e) { return sv[size_t(t * E + e)]; });
      double cum = 0;
      int32_t taken = 0;
      while (taken < E && (taken == 0 || cum < p)) {
        const int64_t e = order[size_t(taken)];
        want_ranked[size_t(t * E + taken++)] = int32_t(e);
        cum += double(sv[size_t(t * E + e)]);
      }
      want_counts[size_t(t)] = taken;
    }
    auto [ranked, counts] = be.top_p_select(s.to(Device::cuda), p);
    ASSERT_EQ(ranked.device(), Device::cuda);
    EXPECT_EQ(ranked.shape(), (Shape{T, E}));
    EXPECT_EQ(ranked.to_vector<int32_t>(), want_ranked) << "p = " << p;
    EXPECT_EQ(counts.to_vector<int32_t>(), want_counts) << "p = " << p;
  }
}

TEST_F(ChoiceTopPDeviceOps, RoutingEntropyMatchesCpuWithAutograd) {
  const int64_t T = 23, E = 9;
  // Sharp rows (logits times 4): tiny scores too, where d(s log s)/ds = log s + 1 is large.
  Tensor s = softmax(random_host({T, E}, 53, 4.0), 1);
  Tensor sh = s.detach().to(DType::f64), sd = s.detach().to(Device::cuda).detach();
  sh.set_requires_grad(true);
  sd.set_requires_grad(true);
  Tensor want = neg(mean_all(sum(mul(sh, log(add_scalar(sh, 1e-30))), {1})));
  want.backward(Tensor::scalar(0.7, DType::f64));
  Tensor got = cuda_backend("test").routing_entropy(sd);
  ASSERT_EQ(got.device(), Device::cuda);
  EXPECT_EQ(got.dim(), 0);
  got.backward(Tensor::scalar(0.7, DType::f32).to(Device::cuda));
  EXPECT_NEAR(got.item_double(), want.item_double(), 1e-5 * want.item_double());
  const std::vector<double> g = sd.grad().to_double_vector(), w = sh.grad().to_double_vector();
  double top = 0;
  for (double v : w) top = std::max(top, std::abs(v));
  for (size_t i = 0; i < w.size(); ++i) EXPECT_NEAR(g[i], w[i], 1e-5 * top) << "entry " << i;
}

// ---- the layers ----

constexpr double kF32Rel = 1e-5;

struct ChoiceCase {
  std::string name, strategy;  // expert_choice | top_p
  std::string score = "softmax";
  double gate_scale = 1.0;
  double capacity = 2.0;  // expert_choice_capacity c
  double p = 0.6;         // top_p_threshold
  DType act = DType::f32;
  bool eval = false;
};

ModelConfig choice_config(const ChoiceCase& c) {
  ModelConfig m = test::small_moe_config(c.strategy);
  m.moe.score_function = c.score;
  m.moe.gate_scale = c.gate_scale;
  m.moe.balance.expert_choice_capacity = c.capacity;
  m.moe.balance.top_p_threshold = c.p;
  m.moe.balance.top_p_entropy_beta = 0.05;
  return m;
}

// The CPU layer's router scores of x [T, E] (what the device's fp32 GEMM rounds differently).
std::vector<double> cpu_scores(MoeLayer& cpu, const Tensor& x) {
  NoGradGuard ng;
  const int64_t T = x.size(0) * x.size(1);
  Tensor logits = matmul(x.reshape({T, x.size(2)}), cpu.router().weight().transpose(0, 1));
  Tensor s = cpu.router().score_function() == ScoreFunction::sigmoid ? sigmoid(logits) : softmax(logits, 1);
  return s.to_double_vector();
}

// The smallest distance of a decision from flipping: expert choice, each expert's C-th minus
// (C+1)-th largest token score; top-p, each token's running sums from p and the gaps between
// consecutive scores up to the last taken (they order the token's choices).
double decision_margin(const ChoiceCase& c, const std::vector<double>& s, int64_t T, int64_t E) {
  double margin = 1e9;
  if (c.strategy == "expert_choice") {
    const int64_t C = std::min<int64_t>(T, int64_t(std::ceil(double(T) * c.capacity / double(E))));
    for (int64_t e = 0; e < E && C < T; ++e) {
      std::vector<double> col(static_cast<size_t>(T));
      for (int64_t t = 0; t < T; ++t) col[size_t(t)] = s[size_t(t * E + e)];
      std::sort(col.begin(), col.end(), std::greater<double>());
      margin = std::min(margin, col[size_t(C - 1)] - col[size_t(C)]);
    }
    return margin;
  }
  for (int64_t t = 0; t < T; ++t) {
    std::vector<double> row(s.begin() + t * E, s.begin() + (t + 1) * E);
    std::sort(row.begin(), row.end(), std::greater<double>());
    double cum = 0;
    for (int64_t r = 0; r < E; ++r) {
      if (r > 0) margin = std::min(margin, row[size_t(r - 1)] - row[size_t(r)]);
      cum += row[size_t(r)];
      margin = std::min(margin, std::abs(cum - c.p));
      if (cum >= c.p) break;
    }
  }
  return margin;
}

struct Run {
  Tensor out, xgrad;
  std::vector<Tensor> grads;  // named_parameters() order
};

Run run_layer(MoeLayer& layer, const Tensor& x, const Tensor& R, Device dev, DType act) {
  Tensor xl = dev == Device::cuda ? x.detach().to(act).to(Device::cuda).detach() : x.detach().clone();
  xl.set_requires_grad(true);
  Run r;
  r.out = layer.forward(xl);
  test::layer_loss(layer, r.out, R).backward();
  r.xgrad = xl.grad();
  for (const auto& np : layer.named_parameters()) r.grads.push_back(np.second.grad());
  return r;
}

void expect_same_decisions(MoeLayer& got, MoeLayer& want, const std::string& what) {
  SCOPED_TRACE(what);
  const Routing &g = got.last_routing(), &w = want.last_routing();
  EXPECT_EQ(g.token.to_vector<int64_t>(), w.token.to_vector<int64_t>());
  EXPECT_EQ(g.expert.to_vector<int64_t>(), w.expert.to_vector<int64_t>());
  EXPECT_EQ(got.last_stats().load, want.last_stats().load);
  EXPECT_EQ(g.score.device(), Device::cpu);
  EXPECT_TRUE(test::near_rel_max(g.score, w.score, kF32Rel, "selection score"));
  EXPECT_TRUE(test::near_rel_max(g.gate, w.gate, kF32Rel, "gate"));
  const std::vector<ExtraLoss> gl = got.extra_losses(), wl = want.extra_losses();
  ASSERT_EQ(gl.size(), wl.size());
  for (size_t i = 0; i < wl.size(); ++i) {
    EXPECT_EQ(gl[i].name, wl[i].name);
    EXPECT_EQ(gl[i].scaled.device(), Device::cpu) << wl[i].name;
    EXPECT_NEAR(gl[i].unscaled, wl[i].unscaled, kF32Rel * std::abs(wl[i].unscaled)) << wl[i].name;
    EXPECT_NEAR(gl[i].scaled.item_double(), wl[i].scaled.item_double(), kF32Rel * std::abs(wl[i].scaled.item_double()))
        << wl[i].name;
  }
}

// Output and input grad within router_rel, the router grad within router_grad_rel, the experts'
// grads within rel; the input grad of the tokens in `bf16_tokens` within rel (the experts take
// gate * dy in bf16: test::tokens_with_unequal_gates).
void expect_near_run(MoeLayer& layer, const Run& got, const Run& want, double rel, double router_rel,
                     double router_grad_rel, const std::vector<bool>& bf16_tokens, const std::string& what) {
  SCOPED_TRACE(what);
  EXPECT_TRUE(test::near_rel_max(got.out, want.out, router_rel, "output"));
  EXPECT_TRUE(test::near_rel_max_rows(got.xgrad, want.xgrad, bf16_tokens, router_rel, rel, "input grad"));
  const auto named = layer.named_parameters();
  ASSERT_EQ(got.grads.size(), want.grads.size());
  for (size_t i = 0; i < named.size(); ++i) {
    const bool router = named[i].first.rfind("router", 0) == 0;
    EXPECT_TRUE(
        test::near_rel_max(got.grads[i], want.grads[i], router ? router_grad_rel : rel, named[i].first + " grad"));
  }
}

class ChoiceTopPDeviceRouting : public ::testing::Test {
 protected:
  void SetUp() override { cuda::install_backend("ChoiceTopPDeviceRouting"); }
};

bool ragged(const std::vector<int64_t>& per_token) {
  const auto [fewest, most] = std::minmax_element(per_token.begin(), per_token.end());
  return *fewest != *most;
}

void run_case(const ChoiceCase& c, uint64_t seed = 31) {
  SCOPED_TRACE(c.name);
  const ModelConfig cfg = choice_config(c);
  Philox r1(test_seed(1234), 0), r2(test_seed(1234), 0), r3(test_seed(1234), 0), r4(test_seed(1234), 0);
  // probe: a fourth copy on the CPU that tries the candidate inputs (the others see only the one).
  MoeLayer cpu(cfg, 0, r1), dev(cfg, 0, r2), dev_host(cfg, 0, r3), probe(cfg, 0, r4);
  for (MoeLayer* l : {&cpu, &dev, &dev_host, &probe}) {  // bf16-exact masters (the device experts' bf16)
    NoGradGuard ng;
    for (Tensor p : l->parameters()) p.copy_(p.to(DType::bf16));
  }
  dev.to(Device::cuda);
  dev_host.to(Device::cuda);
  dev_host.set_device_routing(false);
  if (c.eval)
    for (MoeLayer* l : {&cpu, &dev, &dev_host, &probe}) l->eval();
  const int64_t T = 14, E = cfg.moe.num_experts;
  auto input = [](uint64_t s) { return random_host({2, 7, 40}, s).to(DType::bf16).to(DType::f32); };
  // An input away from every decision, whose selection is ragged (a fresh seed can give every
  // token as many experts: seed 2633194695 did for top_p 0.45 in bf16).
  const auto [usable, found] = first_usable_seed(seed, [&](uint64_t s) {
    if (decision_margin(c, cpu_scores(cpu, input(s)), T, E) <= 1e-4) return false;
    NoGradGuard ng;
    probe.forward(input(s));
    return ragged(test::choices_per_token(probe.last_routing(), T));
  });
  ASSERT_TRUE(found) << "every input drawn was near a decision or gave every token as many experts";
  Tensor x = input(usable), R = random_host({2, 7, 40}, usable + 1);

  Run h = run_layer(cpu, x, R, Device::cpu, DType::f32);
  Run d = run_layer(dev, x, R, Device::cuda, c.act);
  Run dh = run_layer(dev_host, x, R, Device::cuda, c.act);
  EXPECT_TRUE(dev.last_routed_on_device());
  EXPECT_FALSE(dev_host.last_routed_on_device());
  ASSERT_EQ(d.out.device(), Device::cuda);
  for (const Tensor& g : d.grads) EXPECT_EQ(g.device(), Device::cuda);
  // A ragged selection (as the probe saw): some token with no expert or more than top_k, or a
  // varying count.
  EXPECT_TRUE(ragged(test::choices_per_token(cpu.last_routing(), T)))
      << "every token got as many experts: the case does not exercise a ragged selection";

  expect_same_decisions(dev, cpu, "device layer vs cpu layer");
  expect_same_decisions(dev, dev_host, "device routing vs host routing, both on the device");
  const double rel = test::bf16_experts_rel(c.act);
  expect_near_run(cpu, d, h, rel, rel, test::bf16_router_grad_rel(c.act), std::vector<bool>(size_t(T), true),
                  "device layer vs cpu layer");
  const double host_rel = c.act == DType::f32 ? kF32Rel : rel;
  expect_near_run(cpu, d, dh, rel, host_rel, host_rel,
                  test::tokens_with_unequal_gates(dev.last_routing(), dev_host.last_routing(), T),
                  "device routing vs host routing");
}

TEST_F(ChoiceTopPDeviceRouting, ExpertChoiceTraining) { run_case({"expert_choice c 2", "expert_choice"}); }
TEST_F(ChoiceTopPDeviceRouting, ExpertChoiceSigmoidScaledEval) {
  ChoiceCase c{"expert_choice sigmoid, scale 2.5, c 1.3, eval", "expert_choice", "sigmoid", 2.5, 1.3};
  c.eval = true;
  run_case(c);
}
TEST_F(ChoiceTopPDeviceRouting, ExpertChoiceBf16Activations) {
  ChoiceCase c{"expert_choice bf16", "expert_choice"};
  c.act = DType::bf16;
  run_case(c);
}
TEST_F(ChoiceTopPDeviceRouting, TopPTraining) { run_case({"top_p p 0.6", "top_p"}); }
TEST_F(ChoiceTopPDeviceRouting, TopPScaledEval) {  // top_p needs softmax scores
  ChoiceCase c{"top_p scale 1.5, p 0.9, eval", "top_p", "softmax", 1.5};
  c.p = 0.9;
  c.eval = true;
  run_case(c);
}
TEST_F(ChoiceTopPDeviceRouting, TopPBf16Activations) {
  ChoiceCase c{"top_p p 0.45 bf16", "top_p"};
  c.p = 0.45;
  c.act = DType::bf16;
  run_case(c);
}

// Both route on the device without a data-parallel batch communicator (none, or a world of one;
// expert choice says no under a larger world with scope "global": batch_communicator, as sinkhorn).
TEST(ChoiceTopPDeviceEligibility, RouteOnTheDeviceWithoutABatchCommunicator) {
  for (const std::string scope : {"global", "local"})
    for (const std::string strategy : {"expert_choice", "top_p"}) {
      ModelConfig m = test::small_moe_config(strategy);
      m.moe.balance.scope = scope;
      std::unique_ptr<Balancer> b = make_balancer(m.moe);
      EXPECT_TRUE(b->routes_on_device()) << strategy << ", " << scope << ", no communicator";
      b->set_communicator(make_self_communicator());
      EXPECT_TRUE(b->routes_on_device()) << strategy << ", " << scope << ", a world of one";
    }
}

}  // namespace
}  // namespace moe
