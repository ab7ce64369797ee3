// For tests of Tensor-level ops on the cuda device: seeded host inputs (moved to the device by
// each test as it needs them).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/cpu/elementwise.h"
#include "core/cpu/reduce.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "layers/model_config.h"
#include "layers/moe/moe_layer.h"

namespace moe::test {

// Standard normal values times `scale`, f32, on the host; the same for the same (shape, seed).
inline Tensor random_host(const Shape& shape, uint64_t seed, double scale = 1.0) {
  Philox rng(seed, 0);
  std::vector<float> v(size_t(shape_numel(shape)));
  for (float& x : v) x = float(rng.normal() * scale);
  return Tensor::from_vector(v, shape);
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
