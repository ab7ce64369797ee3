// MoeLayer end to end: f64 gradient check of the whole layer with routing held fixed (router,
// experts, shared experts, drops, z-loss), dense equivalence for E = 1, k = 1, loads and stats
// bookkeeping, and settings refused at construction with the key named.
#include "layers/moe/moe_layer.h"

#include <gtest/gtest.h>

#include <cmath>

#include "core/ops.h"
#include "tests/gradcheck.h"

using namespace moe;
using test::randn_f64;

namespace {

// scores[token[a], expert[a]] for every assignment, differentiable (index_select on the flat view).
Tensor pick_scores(const Tensor& scores, const Tensor& token, const Tensor& expert) {
  const int64_t C = scores.size(1);
  std::vector<int64_t> idx = token.to_vector<int64_t>(), ex = expert.to_vector<int64_t>();
  for (size_t a = 0; a < idx.size(); ++a) idx[a] = idx[a] * C + ex[a];
  return index_select(scores.reshape({scores.numel()}), 0, Tensor::from_vector<int64_t>(idx, {int64_t(idx.size())}));
}

// A minimal token-choice strategy for these tests (the real ones live in balance/): top-k of
// the scores (ties to the lower index), gates = selected scores, renormalized when k > 1, and a
// small differentiable loss so extra-loss plumbing is exercised.
class TopKTestBalancer : public Balancer {
 public:
  std::string name() const override { return "test_topk"; }
  Routing select(const RouterOutput& in, Philox&) override {
    const int64_t T = in.scores.size(0), C = in.scores.size(1), k = in.top_k;
    std::vector<double> s = in.scores.to_double_vector();
    std::vector<int64_t> tok, ex;
    for (int64_t t = 0; t < T; ++t) {
      std::vector<bool> used(size_t(C), false);
      for (int64_t j = 0; j < k; ++j) {
        int64_t best = -1;
        for (int64_t c = 0; c < C; ++c)
          if (!used[size_t(c)] && (best < 0 || s[size_t(t * C + c)] > s[size_t(t * C + best)])) best = c;
        used[size_t(best)] = true;
        tok.push_back(t);
        ex.push_back(best);
      }
    }
    return routing_for(in, tok, ex);
  }
  std::vector<ExtraLoss> extra_losses(const RouterOutput& in, const Routing&) override {
    Tensor l = mean_all(square(in.scores));
    return {ExtraLoss{"test", mul_scalar(l, 0.5), l.item_double()}};
  }
  std::vector<double> state_vector() const override { return {1, 2}; }

  // Gates for fixed (token, expert) pairs, differentiable through the scores.
  static Routing routing_for(const RouterOutput& in, const std::vector<int64_t>& tok, const std::vector<int64_t>& ex) {
    const int64_t A = int64_t(tok.size()), k = in.top_k;
    Routing r;
    r.token = Tensor::from_vector<int64_t>(tok, {A});
    r.expert = Tensor::from_vector<int64_t>(ex, {A});
    Tensor g = pick_scores(in.scores, r.token, r.expert);
    if (k > 1) {
      Tensor g2 = g.reshape({A / k, k});
      g = div(g2, sum(g2, {1}, true)).reshape({A});
    }
    r.gate = g;
    r.score = g.detach();
    return r;
  }
};

ModelConfig small_config(int64_t E, int64_t k, int64_t D, int64_t H) {
  ModelConfig c;
  c.d_model = D;
  c.init_std = 0.4;
  c.moe.num_experts = E;
  c.moe.top_k = k;
  c.moe.expert_hidden = H;
  return c;
}

std::unique_ptr<Balancer> test_balancer() { return std::make_unique<TopKTestBalancer>(); }

// Naive SwiGLU FFN in double: y = (silu(x w1^T) * (x w3^T)) w2^T for one weight set.
std::vector<double> dense_swiglu(const std::vector<double>& x, int64_t T, int64_t D, int64_t H,
                                 const std::vector<double>& w1, const std::vector<double>& w3,
                                 const std::vector<double>& w2) {
  std::vector<double> y(static_cast<size_t>(T * D), 0.0);
  std::vector<double> h(static_cast<size_t>(H));
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t i = 0; i < H; ++i) {
      double a = 0, b = 0;
      for (int64_t d = 0; d < D; ++d) {
        a += x[size_t(t * D + d)] * w1[size_t(i * D + d)];
        b += x[size_t(t * D + d)] * w3[size_t(i * D + d)];
      }
      h[size_t(i)] = a / (1 + std::exp(-a)) * b;
    }
    for (int64_t d = 0; d < D; ++d)
      for (int64_t i = 0; i < H; ++i) y[size_t(t * D + d)] += h[size_t(i)] * w2[size_t(d * H + i)];
  }
  return y;
}

void expect_error_naming(const std::function<void()>& f, const std::string& key) {
  try {
    f();
    ADD_FAILURE() << "expected an error naming " << key;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(key), std::string::npos) << e.what();
  }
}

}  // namespace

TEST(MoeLayer, ParametersAndMoeEvery) {
  ModelConfig c = small_config(4, 2, 6, 5);
  c.moe.num_shared_experts = 2;
  Philox rng(1, 1);
  MoeLayer layer(c, 0, rng, test_balancer());
  auto ps = layer.named_parameters();
  std::vector<std::string> names;
  for (auto& [n, t] : ps) names.push_back(n);
  EXPECT_EQ(names, (std::vector<std::string>{"router.weight", "experts.w1", "experts.w3", "experts.w2",
                                             "shared_experts.w1", "shared_experts.w3", "shared_experts.w2"}));
  EXPECT_EQ(ps[0].second.shape(), (Shape{4, 6}));
  EXPECT_EQ(ps[0].second.dtype(), DType::f32);
  EXPECT_EQ(ps[4].second.shape(), (Shape{1, 10, 6}));
  MoeConfig m;
  m.moe_every = 2;
  EXPECT_FALSE(is_moe_layer(m, 0));
  EXPECT_TRUE(is_moe_layer(m, 1));
  EXPECT_TRUE(is_moe_layer(m, 3));
  m.moe_every = 1;
  EXPECT_TRUE(is_moe_layer(m, 0));
  ModelConfig d;
  d.d_model = 256;
  d.moe.expert_hidden = 0;
  EXPECT_EQ(resolved_expert_hidden(d), 688);  // 8/3 * 256 = 682.7 -> 683 -> multiple of 8
}

TEST(MoeLayer, GradcheckWholeLayerWithFixedRouting) {
  // B = 2, S = 3 (T = 6), D = 6, E = 4, k = 2, H = 5, one shared expert, capacity 0.75 (C = 3,
  // so some assignments drop), z-loss on. Routing is frozen to the first forward's choice.
  ModelConfig c = small_config(4, 2, 6, 5);
  c.moe.num_shared_experts = 1;
  c.moe.capacity_factor = 0.75;
  c.moe.drop_policy = "position";
  c.moe.z_loss_coef = 0.1;
  Philox rng(2, 1);
  MoeLayer layer(c, 1, rng, test_balancer(), DType::f64);
  Tensor x = randn_f64({2, 3, 6}, 11);
  std::vector<int64_t> tok, ex;
  {
    NoGradGuard ng;
    layer.forward(x);
    EXPECT_GT(layer.last_stats().dropped, 0);  // the drop path is exercised
  }
  // Record the choice with the real strategy once, then replay it.
  TopKTestBalancer probe;
  layer.set_select_override([&](const RouterOutput& in) {
    if (tok.empty()) {
      Routing r = probe.select(in, layer.select_rng());
      tok = r.token.to_vector<int64_t>();
      ex = r.expert.to_vector<int64_t>();
    }
    return TopKTestBalancer::routing_for(in, tok, ex);
  });
  std::vector<Tensor> inputs{x};
  for (auto& [n, t] : layer.named_parameters()) inputs.push_back(t);
  auto f = [&](const std::vector<Tensor>&) {
    Tensor y = layer.forward(inputs[0]);
    for (const ExtraLoss& l : layer.extra_losses()) y = add(y, l.scaled);
    return y;
  };
  EXPECT_GRADCHECK(f, inputs, 1e-6, 1e-8, 1e-6);
  ASSERT_EQ(layer.extra_losses().size(), 2u);
  EXPECT_EQ(layer.extra_losses()[1].name, "z");
  EXPECT_NEAR(layer.extra_losses()[1].scaled.item<double>(), 0.1 * layer.extra_losses()[1].unscaled, 1e-15);
  // The router weight gets gradient only through gates and losses; it must be nonzero.
  double gnorm = 0;
  for (double v : inputs[1].grad().to_double_vector()) gnorm += v * v;
  EXPECT_GT(gnorm, 0);
}

TEST(MoeLayer, OneExpertTopOneEqualsDenseSwiglu) {
  const int64_t D = 13, H = 21, B = 3, S = 5;
  for (DType dt : {DType::f64, DType::f32}) {
    ModelConfig c = small_config(1, 1, D, H);
    c.init_std = 0.3;
    Philox rng(4, 1);
    MoeLayer layer(c, 0, rng, test_balancer(), dt);
    Tensor x = randn_f64({B, S, D}, 21, 1.0, false).to(dt);
    Tensor y = layer.forward(x);
    const Experts& e = layer.experts();
    std::vector<double> ref = dense_swiglu(x.to_double_vector(), B * S, D, H, e.w1().to_double_vector(),
                                           e.w3().to_double_vector(), e.w2().to_double_vector());
    std::vector<double> got = y.to_double_vector();
    ASSERT_EQ(got.size(), ref.size());
    double tol = dt == DType::f64 ? 1e-12 : 1e-6;
    for (size_t i = 0; i < ref.size(); ++i) EXPECT_NEAR(got[i], ref[i], tol) << "element " << i;
  }
}

TEST(MoeLayer, DroppedTokensGetZeroAndLoadsAccumulateInTrainingOnly) {
  // E = 2, k = 1, capacity 0.5 over T = 8 tokens: C = 2 per expert; everything else dropped.
  ModelConfig c = small_config(2, 1, 4, 3);
  c.moe.capacity_factor = 0.5;
  Philox rng(5, 1);
  MoeLayer layer(c, 0, rng, test_balancer(), DType::f64);
  Tensor x = randn_f64({2, 4, 4}, 31, 1.0, false);
  Tensor y = layer.forward(x);
  const RoutingStats& s = layer.last_stats();
  ASSERT_EQ(s.load.size(), 2u);
  EXPECT_EQ(s.load[0] + s.load[1], 8);
  int64_t expect_dropped = int64_t(std::max(0.0, s.load[0] - 2) + std::max(0.0, s.load[1] - 2));
  EXPECT_EQ(s.dropped, expect_dropped);
  EXPECT_GT(s.dropped, 0);
  int64_t zero_rows = 0;
  auto v = y.to_double_vector();
  for (int64_t t = 0; t < 8; ++t) {
    bool zero = true;
    for (int64_t d = 0; d < 4; ++d) zero = zero && v[size_t(t * 4 + d)] == 0.0;
    zero_rows += zero;
  }
  EXPECT_EQ(zero_rows, s.dropped);  // k = 1: a dropped assignment leaves its token's row zero
  EXPECT_EQ(s.balancer_state, (std::vector<double>{1, 2}));
  EXPECT_GE(s.router_entropy, 0);
  EXPECT_LE(s.router_entropy, std::log(2.0) + 1e-12);

  std::vector<double> first = s.load;
  double first_entropy = s.router_entropy;
  int64_t first_dropped = s.dropped;
  Tensor x2 = randn_f64({2, 4, 4}, 32, 1.0, false);
  layer.forward(x2);
  std::vector<double> second = layer.last_stats().load;
  double second_entropy = layer.last_stats().router_entropy;
  int64_t dropped2 = layer.last_stats().dropped;
  layer.eval();
  layer.forward(x);  // eval forwards count neither towards the update nor the step's stats
  layer.train();
  std::vector<double> pending = layer.take_pending_loads();
  EXPECT_EQ(pending, (std::vector<double>{first[0] + second[0], first[1] + second[1]}));
  EXPECT_EQ(layer.take_pending_loads(), (std::vector<double>{0, 0}));
  RoutingStats step = layer.take_step_stats();
  EXPECT_EQ(step.load, pending);
  EXPECT_EQ(step.tokens, 16);
  EXPECT_EQ(step.dropped, first_dropped + dropped2);
  EXPECT_NEAR(step.router_entropy, (first_entropy + second_entropy) / 2, 1e-14);
  RoutingStats none = layer.take_step_stats();
  EXPECT_EQ(none.load, (std::vector<double>{0, 0}));
  EXPECT_EQ(none.dead_experts, 2);
}

TEST(MoeLayer, BadSettingsThrowNamingTheKey) {
  auto build = [](ModelConfig c) {
    Philox rng(1, 1);
    MoeLayer layer(c, 0, rng, test_balancer());
  };
  ModelConfig c = small_config(4, 5, 8, 8);
  expect_error_naming([&] { build(c); }, "router.top_k");
  c = small_config(4, 0, 8, 8);
  expect_error_naming([&] { build(c); }, "router.top_k");
  c = small_config(0, 1, 8, 8);
  expect_error_naming([&] { build(c); }, "moe.num_experts");
  c = small_config(4, 2, 8, 8);
  c.moe.capacity_factor = 0.0;
  expect_error_naming([&] { build(c); }, "moe.capacity_factor");
  c.moe.capacity_factor = -2.0;
  expect_error_naming([&] { build(c); }, "moe.capacity_factor");
  c = small_config(4, 2, 8, 8);
  c.moe.drop_policy = "random";
  expect_error_naming([&] { build(c); }, "moe.drop_policy");
  c = small_config(4, 2, 8, 8);
  c.moe.score_function = "tanh";
  expect_error_naming([&] { build(c); }, "router.score");
  c = small_config(4, 2, 8, 8);
  c.moe.jitter = 1.0;
  expect_error_naming([&] { build(c); }, "router.jitter");
  c = small_config(4, 2, 8, 8);
  c.moe.z_loss_coef = -1;
  expect_error_naming([&] { build(c); }, "router.z_loss");
  c = small_config(4, 2, 8, 8);
  c.moe.moe_every = 0;
  expect_error_naming([&] { build(c); }, "moe.moe_every");
  c = small_config(4, 2, 8, 8);
  c.moe.num_shared_experts = -1;
  expect_error_naming([&] { build(c); }, "moe.num_shared_experts");
  // A wrong input width names the layer and the expected shape.
  Philox rng(1, 1);
  MoeLayer layer(small_config(4, 2, 8, 8), 0, rng, test_balancer());
  expect_error_naming([&] { layer.forward(Tensor::zeros({2, 3, 7})); }, "MoeLayer.forward");
}

TEST(MoeLayer, EveryStrategyRunsForwardBackwardThroughTheLayer) {
  // The registry's strategies inside the layer: shapes, finite outputs and grads, loads that
  // sum to the assignments, and null experts widening the router.
  for (const char* name : {"none", "aux_loss", "loss_free", "sinkhorn", "ssr", "bip", "quantile", "expert_choice",
                           "null_experts", "top_p"}) {
    SCOPED_TRACE(name);
    ModelConfig c = small_config(4, 2, 6, 5);
    c.moe.balance.strategy = name;
    if (std::string(name) == "null_experts") c.moe.balance.num_null_experts = 2;
    c.moe.capacity_factor = 1.5;
    c.moe.z_loss_coef = 1e-3;
    Philox rng(6, 1);
    MoeLayer layer(c, 0, rng);
    EXPECT_EQ(layer.balancer().name(), name);
    EXPECT_EQ(layer.router().weight().size(0), std::string(name) == "null_experts" ? 6 : 4);
    Tensor x = test::randn_f32({2, 5, 6}, 41, 1.0, true);
    Tensor y = layer.forward(x);
    for (const ExtraLoss& l : layer.extra_losses()) y = add(y, l.scaled);
    y.backward(Tensor::ones({2, 5, 6}));
    for (double v : y.to_double_vector()) ASSERT_TRUE(std::isfinite(v));
    for (double v : x.grad().to_double_vector()) ASSERT_TRUE(std::isfinite(v));
    double sum = 0;
    for (double l : layer.last_stats().load) sum += l;
    EXPECT_EQ(int64_t(sum), layer.last_stats().assignments);
    EXPECT_GT(sum, 0);
    layer.balancer().update(layer.take_pending_loads());
  }
}

TEST(MoeLayer, GradcheckWithAuxLossStrategyAndZLoss) {
  // aux_loss routes by plain top-k, which tiny perturbations do not change on random inputs;
  // its loss and the z-loss reach the router weight through the scores and logits.
  ModelConfig c = small_config(3, 2, 5, 4);
  c.moe.balance.strategy = "aux_loss";
  c.moe.balance.aux_alpha = 0.3;
  c.moe.z_loss_coef = 0.05;
  Philox rng(8, 1);
  MoeLayer layer(c, 0, rng, DType::f64);
  std::vector<Tensor> inputs{randn_f64({1, 7, 5}, 51)};
  for (auto& [n, t] : layer.named_parameters()) inputs.push_back(t);
  auto f = [&](const std::vector<Tensor>&) {
    Tensor y = layer.forward(inputs[0]);
    for (const ExtraLoss& l : layer.extra_losses()) y = add(y, l.scaled);
    return y;
  };
  EXPECT_GRADCHECK(f, inputs, 1e-6, 1e-8, 1e-6);
  std::vector<std::string> names;
  for (const ExtraLoss& l : layer.extra_losses()) names.push_back(l.name);
  EXPECT_EQ(names.back(), "z");
  EXPECT_GE(names.size(), 2u);
}

TEST(MoeLayer, UnknownStrategyIsRefusedNamingTheKey) {
  ModelConfig c = small_config(4, 2, 6, 5);
  c.moe.balance.strategy = "magic";
  Philox rng(1, 1);
  expect_error_naming([&] { MoeLayer layer(c, 0, rng); }, "router.balance");
  c = small_config(4, 5, 6, 5);  // k > E is caught before the strategy is built
  expect_error_naming([&] { MoeLayer layer(c, 0, rng); }, "router.top_k");
}
