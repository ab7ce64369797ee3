// For tests of Tensor-level ops on the cuda device: seeded host inputs (moved to the device by
// each test as it needs them).
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "core/cpu/elementwise.h"
#include "core/cpu/reduce.h"
#include "core/device.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "layers/model_config.h"
#include "layers/moe/balance/sinkhorn_plan.h"
#include "layers/moe/moe_layer.h"
#include "tests/cuda/test_seed.h"

namespace moe::test {

// Standard normal values times `scale`, f32, on the host; the same for the same (shape, seed)
// within a run (test_seed).
inline Tensor random_host(const Shape& shape, uint64_t seed, double scale = 1.0) {
  Philox rng(test_seed(seed), 0);  // fresh per run: tests/cuda/test_seed.h
  std::vector<float> v(size_t(shape_numel(shape)));
  for (float& x : v) x = float(rng.normal() * scale);
  return Tensor::from_vector(v, shape);
}

// The tolerance, relative to the largest entry, of a device MoE layer (or its experts) against
// the CPU one: the device experts multiply in bf16, so an entry of the output or of a grad carries
// up to four bf16 roundings (a = x w1, u = x w3, h = silu(a) u, then y or dy; unit roundoff
// 2^-8 = 0.39% each, silu's relative sensitivity up to ~1.2) wherever one token dominates it:
// ~1.6% at worst (measured up to 1.1%, the w2 grad, on a fresh seed). bf16 activations round the
// layer's input grad and output too.
inline double bf16_experts_rel(DType activations) { return activations == DType::bf16 ? 3e-2 : 2e-2; }
// The router weight's grad against the CPU layer: it sums gate grads over the tokens, each a dot
// product of dy with a bf16 expert output, and carries that rounding through cancellation
// (measured 1.4e-2 to 2.1e-2 on fresh seeds).
inline double bf16_router_grad_rel(DType activations) { return activations == DType::bf16 ? 6e-2 : 3e-2; }

// max |got - want| / max |want| over the entries (tensors on either device; the plain max |diff|
// when want is all zero); infinity when a side is undefined, the sizes differ or an entry is NaN
// on one side only.
inline double max_rel_diff(const Tensor& got, const Tensor& want) {
  constexpr double kInf = std::numeric_limits<double>::infinity();
  if (!got.defined() || !want.defined() || got.numel() != want.numel()) return kInf;
  const std::vector<double> g = got.to_double_vector(), w = want.to_double_vector();
  double top = 0, worst = 0;
  for (size_t i = 0; i < w.size(); ++i) {
    if (std::isnan(g[i]) != std::isnan(w[i])) return kInf;
    top = std::max(top, std::abs(w[i]));
    worst = std::max(worst, std::abs(g[i] - w[i]));
  }
  return top > 0 ? worst / top : worst;
}

// The tokens whose gates are not bit-equal between two routings of the same batch (Routing's
// token-major entries; every token when the two chose differently). The device experts take
// gate * dy rounded to bf16 (their backward's input), so on such a token an entry of it may round
// to the neighbouring bf16 value, and the token's input grad then differs by a bf16 rounding
// carried through the expert, not by an fp32 one (seen: 2^-7 on an entry of 1.6 with the gates
// 2 fp32 ulps apart, device vs host routing, MOE_TEST_SEED 2899448694).
inline std::vector<bool> tokens_with_unequal_gates(const Routing& a, const Routing& b, int64_t tokens) {
  const std::vector<int64_t> ta = a.token.to_vector<int64_t>(), tb = b.token.to_vector<int64_t>();
  const std::vector<float> ga = a.gate.to(Device::cpu).to(DType::f32).to_vector<float>(),
                           gb = b.gate.to(Device::cpu).to(DType::f32).to_vector<float>();
  if (ta != tb || ga.size() != gb.size()) return std::vector<bool>(size_t(tokens), true);
  std::vector<bool> unequal(size_t(tokens), false);
  for (size_t i = 0; i < ta.size(); ++i)
    if (ga[i] != gb[i]) unequal[size_t(ta[i])] = true;
  return unequal;
}

// How many choices each of `tokens` tokens got in a routing (Routing's token ids).
inline std::vector<int64_t> choices_per_token(const Routing& r, int64_t tokens) {
  std::vector<int64_t> per_token(size_t(tokens), 0);
  for (int64_t t : r.token.to_vector<int64_t>()) ++per_token[size_t(t)];
  return per_token;
}

// |got - want| <= rel * max |want| entry-wise, row by row (a row: numel / loose.size() entries):
// rows marked in `loose` within loose_rel, the others within rel, both relative to the largest
// |want| of the whole tensor. The failure names `what`, the worst entry (a NaN on either side
// first) and both values.
inline ::testing::AssertionResult near_rel_max_rows(const Tensor& got, const Tensor& want, const std::vector<bool>& loose,
                                                    double rel, double loose_rel, const std::string& what) {
  if (!got.defined() || !want.defined())
    return ::testing::AssertionFailure() << what << ": " << (got.defined() ? "want" : "got") << " is undefined";
  if (got.numel() != want.numel() || loose.empty() || want.numel() % int64_t(loose.size()) != 0)
    return ::testing::AssertionFailure() << what << ": shape " << got.shape_str() << " vs " << want.shape_str()
                                         << (loose.size() > 1 ? " in " + std::to_string(loose.size()) + " rows" : "");
  const std::vector<double> g = got.to_double_vector(), w = want.to_double_vector();
  const size_t row = w.size() / loose.size();
  double top = 0;
  for (double v : w) top = std::max(top, std::abs(v));
  size_t at = w.size();  // the worst entry out of bounds (none yet)
  double worst = 0;      // its |diff| beyond the bound (infinite for a NaN)
  for (size_t i = 0; i < w.size(); ++i) {
    const double d = std::abs(g[i] - w[i]), bound = (loose[i / row] ? loose_rel : rel) * top;
    if (d <= bound) continue;
    const double beyond = std::isnan(d) ? std::numeric_limits<double>::infinity() : d - bound;
    if (at == w.size() || beyond > worst) at = i, worst = beyond;
  }
  if (at == w.size()) return ::testing::AssertionSuccess();
  const bool is_loose = loose[at / row];
  auto failure = ::testing::AssertionFailure();
  failure << what << ": max |diff| " << std::abs(g[at] - w[at]) << " at " << at;
  if (loose.size() > 1) failure << " (row " << at / row << (is_loose ? ", loose" : "") << ")";
  return failure << " (got " << g[at] << ", want " << w[at] << ") > " << (is_loose ? loose_rel : rel)
                 << " * max |want| " << top;
}

// near_rel_max_rows with one bound for every entry.
inline ::testing::AssertionResult near_rel_max(const Tensor& got, const Tensor& want, double rel,
                                               const std::string& what) {
  return near_rel_max_rows(got, want, {false}, rel, rel, what);
}

// The smallest gap, over the rows of v [rows, cols], between the k-th and the (k+1)-th largest
// entry: the margin the device's fp32 rounding must not cross for a top-k selection to agree.
inline double kth_gap(const std::vector<double>& v, int64_t rows, int64_t cols, int64_t k) {
  double gap = std::numeric_limits<double>::infinity();
  for (int64_t t = 0; t < rows; ++t) {
    std::vector<double> row(v.begin() + t * cols, v.begin() + (t + 1) * cols);
    std::nth_element(row.begin(), row.begin() + (k - 1), row.end(), std::greater<double>());
    const double kth = row[size_t(k - 1)];
    const double next = *std::max_element(row.begin() + k, row.end());
    gap = std::min(gap, kth - next);
  }
  return gap;
}

// The top-k margin of the host Sinkhorn plan's log Pi for router logits [T, E] (host, f32) under
// the balance config's temperature / iterations / tolerance; also expects the device plan to stop
// at the host plan's iteration (else the two would rank different plans).
inline double sinkhorn_plan_margin(const Tensor& logits, const BalanceConfig& b, int64_t k) {
  SinkhornPlan plan = sinkhorn_plan(logits, b.sinkhorn_temperature, b.sinkhorn_max_iters, b.sinkhorn_tol);
  int iters = -1;
  cuda_backend("test").sinkhorn_plan(logits.to(Device::cuda), b.sinkhorn_temperature, b.sinkhorn_max_iters,
                                     b.sinkhorn_tol, &iters);
  EXPECT_EQ(iters, plan.iterations) << "device and host Sinkhorn stopped at different iterations";
  return kth_gap(plan.log_plan, logits.size(0), plan.experts, k);
}

// The MoE layer of the device tests: d_model 40, 5 experts, top-2, expert_hidden 24 (odd sizes),
// init_std 0.3 so that routing is far from uniform, aux_alpha 0.1 so that the aux loss's grad
// shows in the router's grad. Each test sets what its case varies.
inline ModelConfig small_moe_config(const std::string& strategy) {
  ModelConfig m;
  m.d_model = 40;
  m.n_layers = 2;
  m.init_std = 0.3;
  m.moe.num_experts = 5;
  m.moe.top_k = 2;
  m.moe.expert_hidden = 24;
  m.moe.balance.strategy = strategy;
  m.moe.balance.aux_alpha = 0.1;
  return m;
}

// loss = sum(out * R) + the layer's extra losses (host scalars), so that every grad path of a MoE
// layer (the data path on the device, the router and its losses) is exercised by one backward.
inline Tensor layer_loss(MoeLayer& layer, const Tensor& out, const Tensor& R) {
  Tensor o = out.device() == Device::cuda ? out.to(Device::cpu) : out;
  Tensor loss = sum_all(mul(o.to(DType::f32), R));
  for (const ExtraLoss& e : layer.extra_losses()) loss = add(loss, e.scaled.to(DType::f32));
  return loss;
}

}  // namespace moe::test
