// The MoE layer on the device (emulation): the CSR permute / combine ops against the CPU ops
// with their autograd backward, the SwiGLU experts op against layers/moe/experts, and whole
// MoeLayers (routing on the host, data path on the device) against the same layer on the CPU
// for several balancing strategies: same routing, output and every grad within bf16 tolerance.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/cuda/ops/cuda_backend.h"
#include "core/ops.h"
#include "tests/env_scope.h"
#include "core/rng.h"
#include "layers/moe/dispatch.h"
#include "layers/moe/experts.h"
#include "layers/moe/moe_layer.h"
#include "tests/cuda/device_test_util.h"

namespace moe {
namespace {

using test::near_rel_max;
using test::random_host;
using test::first_usable_seed;
using test::test_seed;

// A device leaf holding host values h (as dtype dt) that requires grad.
Tensor device_leaf(const Tensor& h, DType dt) {
  Tensor d = h.detach().to(dt).to(Device::cuda).detach();
  d.set_requires_grad(true);
  return d;
}
Tensor host_leaf(const Tensor& h) {
  Tensor c = h.detach().clone();
  c.set_requires_grad(true);
  return c;
}

constexpr double kF32Rel = 1e-5, kBf16Rel = 1e-2;

class MoeDevice : public ::testing::Test {
 protected:
  void SetUp() override { cuda::install_backend("MoeDevice"); }
};

// A plan with variable slots per token: top-2 of 5 experts for 11 tokens, some assignments
// dropped (capacity), one token with no kept assignment, an expert with no rows.
DispatchPlanPtr ragged_plan(int64_t T, int64_t E, int64_t k) {
  std::vector<int64_t> tok, ex, kept;
  Philox rng(test_seed(7), 0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < k; ++j) {
      tok.push_back(t);
      int64_t e = int64_t(rng.uniform() * double(E - 1));  // expert E - 1 gets nothing
      ex.push_back(std::min(e, E - 2));
    }
  for (int64_t a = 0; a < int64_t(tok.size()); ++a)
    if (a % 5 != 3 && tok[size_t(a)] != 4) kept.push_back(a);  // token 4: all dropped
  return make_dispatch_plan(Tensor::from_vector(tok, {int64_t(tok.size())}),
                            Tensor::from_vector(ex, {int64_t(ex.size())}), kept, T, E);
}

TEST_F(MoeDevice, PermuteAndCombineMatchTheCpuOps) {
  const int64_t T = 11, E = 5, k = 2, D = 37;
  DispatchPlanPtr plan = ragged_plan(T, E, k);
  ASSERT_LT(plan->kept(), T * k);
  ASSERT_EQ(plan->token_offsets[5], plan->token_offsets[4]);  // token 4 has no slot
  const int64_t K = plan->kept(), A = plan->num_assignments;
  for (DType dt : {DType::f32, DType::bf16}) {
    SCOPED_TRACE(dtype_name(dt));
    const double rel = dt == DType::f32 ? kF32Rel : kBf16Rel;
    // The CPU reference sees the values the device sees (bf16-rounded when dt is bf16).
    Tensor x = random_host({T, D}, 11).to(dt).to(DType::f32), y = random_host({K, D}, 12).to(dt).to(DType::f32);
    Tensor gate = random_host({A}, 13), gout = random_host({T, D}, 14).to(dt).to(DType::f32),
           gperm = random_host({K, D}, 15).to(dt).to(DType::f32);

    // One op per backward: a backward runs (and clears) the whole tape.
    Tensor xh = host_leaf(x), yh = host_leaf(y), gh = host_leaf(gate);
    Tensor ph = permute_tokens(xh, plan);
    ph.backward(gperm);
    Tensor ch = unpermute_combine(yh, gh, plan);
    ch.backward(gout);

    Tensor xd = device_leaf(x, dt), yd = device_leaf(y, dt), gd = device_leaf(gate, DType::f32);
    Tensor pd = permute_tokens(xd, plan);
    ASSERT_EQ(pd.device(), Device::cuda);
    ASSERT_EQ(pd.dtype(), dt);
    pd.backward(gperm.to(dt).to(Device::cuda));
    Tensor cd = unpermute_combine(yd, gd, plan);
    ASSERT_EQ(cd.dtype(), dt);
    cd.backward(gout.to(dt).to(Device::cuda));

    EXPECT_EQ(pd.to_double_vector(), ph.to_double_vector());  // a gather: exact
    EXPECT_TRUE(near_rel_max(xd.grad(), xh.grad(), rel, "permute dx"));
    EXPECT_TRUE(near_rel_max(cd, ch, rel, "combine out"));
    EXPECT_TRUE(near_rel_max(yd.grad(), yh.grad(), rel, "combine dy"));
    ASSERT_EQ(gd.grad().dtype(), DType::f32);
    EXPECT_TRUE(near_rel_max(gd.grad(), gh.grad(), dt == DType::f32 ? kF32Rel : 2e-3, "combine dgate"));
    // Dropped assignments get exactly zero gate grad.
    std::vector<double> dg = gd.grad().to_double_vector();
    std::vector<bool> is_kept(size_t(A), false);
    for (int64_t a : plan->order) is_kept[size_t(a)] = true;
    for (int64_t a = 0; a < A; ++a)
      if (!is_kept[size_t(a)]) {
        EXPECT_EQ(dg[size_t(a)], 0.0) << "assignment " << a;
      }
    // The token without a kept assignment gets a zero row.
    std::vector<double> out = cd.to_double_vector();
    for (int64_t j = 0; j < D; ++j) ASSERT_EQ(out[size_t(4 * D + j)], 0.0);
  }
}

// Every assignment dropped: zero rows through permute, experts and combine, zero grads back.
TEST_F(MoeDevice, AllDroppedGivesZerosAndZeroGrads) {
  const int64_t T = 3, E = 2, D = 8, H = 16;
  DispatchPlanPtr plan = make_dispatch_plan(Tensor::from_vector(std::vector<int64_t>{0, 1, 2}, {3}),
                                            Tensor::from_vector(std::vector<int64_t>{1, 0, 1}, {3}), {}, T, E);
  ASSERT_EQ(plan->kept(), 0);
  Tensor x = device_leaf(random_host({T, D}, 41), DType::bf16), gate = device_leaf(random_host({3}, 42), DType::f32);
  Tensor w1 = device_leaf(random_host({E, H, D}, 43), DType::f32), w3 = device_leaf(random_host({E, H, D}, 44), DType::f32),
         w2 = device_leaf(random_host({E, D, H}, 45), DType::f32);
  Tensor xs = permute_tokens(x, plan);
  EXPECT_EQ(xs.shape(), (Shape{0, D}));
  Tensor ys = expert_swiglu_ffn(xs, w1, w3, w2, plan->offsets);
  Tensor out = unpermute_combine(ys, gate, plan);
  out.backward(random_host({T, D}, 46).to(DType::bf16).to(Device::cuda));
  for (double v : out.to_double_vector()) ASSERT_EQ(v, 0.0);
  for (const Tensor& t : {x, gate, w1, w3, w2}) {
    ASSERT_TRUE(t.grad().defined());
    for (double v : t.grad().to_double_vector()) ASSERT_EQ(v, 0.0);
  }
}

TEST_F(MoeDevice, CombineRefusesMixedDevices) {
  DispatchPlanPtr plan = ragged_plan(5, 3, 2);
  Tensor y = Tensor::zeros({plan->kept(), 8}, DType::f32, Device::cuda), g = Tensor::zeros({10});
  EXPECT_THROW(unpermute_combine(y, g, plan), Error);
}

// The experts op: bf16 products whatever the activation dtype, fp32 weight grads on the device;
// both implementations (the grouped tensor-core kernel, and one dense GEMM per expert).
TEST_F(MoeDevice, SwigluExpertsMatchTheCpuOp) {
  const int64_t D = 40, H = 24, E = 4;
  const std::vector<int64_t> offsets{0, 9, 9, 10, 23};  // an empty expert, a 1-row expert
  const int64_t N = offsets.back();
  Tensor x = random_host({N, D}, 21), w1 = random_host({E, H, D}, 22, 0.2), w3 = random_host({E, H, D}, 23, 0.2),
         w2 = random_host({E, D, H}, 24, 0.2), gy = random_host({N, D}, 25);
  auto r = [](const Tensor& t) { return t.to(DType::bf16).to(DType::f64); };  // what the tensor cores see
  Tensor xh = host_leaf(r(x)), h1 = host_leaf(r(w1)), h3 = host_leaf(r(w3)), h2 = host_leaf(r(w2));
  Tensor yh = expert_swiglu_ffn(xh, h1, h3, h2, offsets);
  yh.backward(r(gy));
  for (const char* impl : {"grouped", "per_expert"})
  for (DType dt : {DType::f32, DType::bf16}) {
    SCOPED_TRACE(std::string(impl) + " " + dtype_name(dt));
    test::EnvScope expert_gemm("MOE_EXPERT_GEMM", impl);
    Tensor xd = device_leaf(x, dt), d1 = device_leaf(w1, DType::f32), d3 = device_leaf(w3, DType::f32),
           d2 = device_leaf(w2, DType::f32);
    Tensor yd = expert_swiglu_ffn(xd, d1, d3, d2, offsets);
    ASSERT_EQ(yd.dtype(), dt);
    yd.backward(gy.to(dt).to(Device::cuda));
    const double rel = test::bf16_experts_rel(dt);
    EXPECT_TRUE(near_rel_max(yd, yh, rel, "y"));
    EXPECT_TRUE(near_rel_max(xd.grad(), xh.grad(), rel, "dx"));
    EXPECT_EQ(xd.grad().dtype(), dt);
    for (auto [d, h, n] : {std::tuple{d1, h1, "dw1"}, std::tuple{d3, h3, "dw3"}, std::tuple{d2, h2, "dw2"}}) {
      EXPECT_EQ(d.grad().device(), Device::cuda) << n;
      EXPECT_EQ(d.grad().dtype(), DType::f32) << n;
      EXPECT_TRUE(near_rel_max(d.grad(), h.grad(), rel, n));
    }
    // The empty expert's weight grads are exactly zero.
    std::vector<double> g1 = d1.grad().to_double_vector();
    for (int64_t i = H * D; i < 2 * H * D; ++i) ASSERT_EQ(g1[size_t(i)], 0.0);
  }
}

// ---- the whole layer ----

struct LayerCase {
  std::string name, strategy;
  std::optional<double> capacity = std::nullopt;
  int64_t shared = 0;
  DType act = DType::f32;
  std::string score = "softmax";
  double z_loss = 0;
};

ModelConfig layer_config(const LayerCase& c) {
  ModelConfig m = test::small_moe_config(c.strategy);
  m.moe.num_shared_experts = c.shared;
  m.moe.capacity_factor = c.capacity;
  m.moe.score_function = c.score;
  m.moe.z_loss_coef = c.z_loss;
  if (c.strategy == "null_experts") m.moe.balance.num_null_experts = 2;
  if (c.strategy == "expert_choice") m.moe.balance.expert_choice_capacity = 1.5;
  return m;
}

using test::layer_loss;

void run_layer_case(const LayerCase& c) {
  SCOPED_TRACE(c.name);
  const ModelConfig cfg = layer_config(c);
  Philox rng_cpu(test_seed(1234), 0), rng_dev(test_seed(1234), 0);
  MoeLayer cpu(cfg, 0, rng_cpu), dev(cfg, 0, rng_dev);
  // The experts multiply in bf16 on the device: fp32 masters and input that are bf16-exact make
  // that conversion exact, so the CPU reference sees the values the tensor cores see and the
  // comparison measures the kernels' own bf16 rounding (intermediates, outputs), not the inputs'.
  for (const Module* m : {static_cast<const Module*>(&cpu), static_cast<const Module*>(&dev)}) {
    NoGradGuard ng;
    for (Tensor p : m->parameters()) p.copy_(p.to(DType::bf16));
  }
  dev.to(Device::cuda);
  // These cases check the data path with the host routing (bit-equal extra losses);
  // tests/cuda/moe_device_routing_test.cpp checks the device routing path.
  dev.set_device_routing(false);

  Tensor x = random_host({2, 9, 40}, 31).to(DType::bf16).to(DType::f32), R = random_host({2, 9, 40}, 32);
  Tensor xh = host_leaf(x), xd = device_leaf(x, c.act);
  // Each layer's forward and backward in turn: a backward runs (and clears) the whole tape.
  Tensor out_h = cpu.forward(xh);
  layer_loss(cpu, out_h, R).backward();
  Tensor out_d = dev.forward(xd);
  layer_loss(dev, out_d, R).backward();
  ASSERT_EQ(out_d.device(), Device::cuda);
  ASSERT_EQ(out_d.dtype(), c.act);

  // Same routing: the router sees bit-identical fp32 inputs and weights on the host.
  EXPECT_EQ(dev.last_routing().token.to_vector<int64_t>(), cpu.last_routing().token.to_vector<int64_t>());
  EXPECT_EQ(dev.last_routing().expert.to_vector<int64_t>(), cpu.last_routing().expert.to_vector<int64_t>());
  EXPECT_EQ(dev.last_stats().dropped, cpu.last_stats().dropped);
  if (c.capacity) {
    EXPECT_GT(cpu.last_stats().dropped, 0) << "the capacity case should drop tokens";
  }
  ASSERT_EQ(dev.extra_losses().size(), cpu.extra_losses().size());
  for (size_t i = 0; i < cpu.extra_losses().size(); ++i)
    EXPECT_EQ(dev.extra_losses()[i].unscaled, cpu.extra_losses()[i].unscaled) << cpu.extra_losses()[i].name;

  const double rel = test::bf16_experts_rel(c.act);
  EXPECT_TRUE(near_rel_max(out_d, out_h, rel, "output"));

  ASSERT_TRUE(xd.grad().defined());
  EXPECT_EQ(xd.grad().device(), Device::cuda);
  EXPECT_EQ(xd.grad().dtype(), c.act);
  EXPECT_TRUE(near_rel_max(xd.grad(), xh.grad(), rel, "input grad"));
  auto ph = cpu.named_parameters(), pd = dev.named_parameters();
  ASSERT_EQ(ph.size(), pd.size());
  for (size_t i = 0; i < ph.size(); ++i) {
    const auto& [name, p] = pd[i];
    SCOPED_TRACE(name);
    EXPECT_EQ(p.device(), Device::cuda);
    ASSERT_TRUE(p.grad().defined());
    EXPECT_EQ(p.grad().device(), Device::cuda);
    EXPECT_EQ(p.grad().dtype(), DType::f32);
    EXPECT_TRUE(near_rel_max(p.grad(), ph[i].second.grad(), rel, name + " grad"));
  }
}

TEST_F(MoeDevice, LayerAuxLossWithZLossMatchesCpu) {
  run_layer_case({"aux_loss", "aux_loss", std::nullopt, 0, DType::f32, "softmax", 1e-2});
}
TEST_F(MoeDevice, LayerAuxLossWithDropsMatchesCpu) {
  run_layer_case({"aux_loss capacity 0.7", "aux_loss", 0.7});
}
TEST_F(MoeDevice, LayerLossFreeSigmoidMatchesCpu) {
  run_layer_case({"loss_free sigmoid", "loss_free", std::nullopt, 0, DType::f32, "sigmoid"});
}
TEST_F(MoeDevice, LayerSinkhornMatchesCpu) { run_layer_case({"sinkhorn", "sinkhorn"}); }
TEST_F(MoeDevice, LayerBipMatchesCpu) { run_layer_case({"bip", "bip"}); }
TEST_F(MoeDevice, LayerExpertChoiceMatchesCpu) { run_layer_case({"expert_choice", "expert_choice"}); }
TEST_F(MoeDevice, LayerNullExpertsMatchesCpu) { run_layer_case({"null_experts", "null_experts"}); }
TEST_F(MoeDevice, LayerSharedExpertsBf16MatchesCpu) {
  run_layer_case({"aux_loss shared bf16", "aux_loss", std::nullopt, 1, DType::bf16});
}

// Eval (no tape): the device layer's output matches, nothing is recorded, loads are not counted.
TEST_F(MoeDevice, LayerEvalWithoutGradMatchesCpu) {
  const ModelConfig cfg = layer_config({"eval", "aux_loss"});
  Philox rng_cpu(test_seed(99), 0), rng_dev(test_seed(99), 0);
  MoeLayer cpu(cfg, 0, rng_cpu), dev(cfg, 0, rng_dev);
  dev.to(Device::cuda);
  cpu.eval();
  dev.eval();
  NoGradGuard ng;
  clear_tape();
  Tensor x = random_host({2, 9, 40}, 51).to(DType::bf16).to(DType::f32);  // same router input
  Tensor out_h = cpu.forward(x), out_d = dev.forward(x.to(DType::bf16).to(Device::cuda));
  EXPECT_EQ(dev.last_routing().expert.to_vector<int64_t>(), cpu.last_routing().expert.to_vector<int64_t>());
  EXPECT_EQ(tape_size(), 0u);
  EXPECT_FALSE(out_d.requires_grad());
  EXPECT_EQ(out_d.dtype(), DType::bf16);
  // Unlike the training cases the fp32 weights are not bf16-exact: their rounding counts too.
  EXPECT_TRUE(near_rel_max(out_d, out_h, 2e-2, "eval output"));
  for (double l : dev.take_pending_loads()) EXPECT_EQ(l, 0.0);
}

}  // namespace
}  // namespace moe
