// For tests of Tensor-level ops on the cuda device: seeded host inputs (moved to the device by
// each test as it needs them).
#pragma once
#include <cstdint>
#include <vector>

#include "core/cpu/elementwise.h"
#include "core/cpu/reduce.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "layers/moe/moe_layer.h"

namespace moe::test {

// Standard normal values times `scale`, f32, on the host; the same for the same (shape, seed).
inline Tensor random_host(const Shape& shape, uint64_t seed, double scale = 1.0) {
  Philox rng(seed, 0);
  std::vector<float> v(size_t(shape_numel(shape)));
  for (float& x : v) x = float(rng.normal() * scale);
  return Tensor::from_vector(v, shape);
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
