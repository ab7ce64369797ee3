// Weight initialization shared by every layer: normal(0, std) drawn from one Philox stream in
// parameter registration order, so the same seed always gives bit-identical weights.
#pragma once
#include "core/rng.h"
#include "core/tensor.h"
#include "layers/model_config.h"

namespace moe {

// Fills t (f32 or f64, contiguous) with N(0, std^2) and advances rng past the draws: element i
// is a pure function of (seed, stream, offset, i) (one Philox block per pair of elements), so
// the fill is parallel and still bit-identical for any thread count.
void init_normal_(Tensor& t, Philox& rng, double std);

// The std of output projections (attention wo, MLP / expert w2): init_std / sqrt(2 n_layers),
// GPT-2's scaling, so the residual stream's variance does not grow with depth.
double output_proj_std(const ModelConfig& cfg);

}  // namespace moe
