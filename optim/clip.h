// Gradient clipping by the global L2 norm over all parameters (as torch's clip_grad_norm_).
#pragma once
#include <vector>

#include "core/tensor.h"

namespace moe {

// The global L2 norm of every defined grad, accumulated in double in parameter order (one
// fixed order, so the result is bit-reproducible). A grad on the cuda device contributes its
// sum of squares from the backend (an fp32 reduction in a fixed order). No grad is changed.
double global_grad_norm(const std::vector<Tensor>& params);

// What clipping multiplies every grad by: max_norm / (norm + 1e-6) when the norm exceeds
// max_norm > 0, else 1 (also for a non-finite norm: the caller decides). The trainer hands it to
// AdamW::step, which applies it as it reads each grad (no pass of its own over the grads).
double clip_scale(double norm, double max_norm);

// Returns the pre-clip global norm. When it exceeds max_norm, every grad is replaced by
// grad * max_norm / (norm + 1e-6). max_norm <= 0 disables clipping (the norm is still
// returned). A non-finite norm leaves the grads untouched: the caller decides (skip the step).
// Host grads are replaced by new tensors; grads on the cuda device are scaled in place (a buffer
// shared by several parameters once).
double clip_grad_norm(const std::vector<Tensor>& params, double max_norm);

}  // namespace moe
