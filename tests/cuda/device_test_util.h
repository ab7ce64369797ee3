// For tests of Tensor-level ops on the cuda device: seeded host inputs (moved to the device by
// each test as it needs them).
#pragma once
#include <cstdint>
#include <vector>

#include "core/rng.h"
#include "core/tensor.h"

namespace moe::test {

// Standard normal values times `scale`, f32, on the host; the same for the same (shape, seed).
inline Tensor random_host(const Shape& shape, uint64_t seed, double scale = 1.0) {
  Philox rng(seed, 0);
  std::vector<float> v(size_t(shape_numel(shape)));
  for (float& x : v) x = float(rng.normal() * scale);
  return Tensor::from_vector(v, shape);
}

}  // namespace moe::test
