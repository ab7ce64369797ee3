// Gradient clipping by the global L2 norm over all parameters (as torch's clip_grad_norm_).
#pragma once
#include <vector>

#include "core/tensor.h"

namespace moe {

// The global L2 norm of every defined grad, accumulated in double in parameter order (one
// fixed order, so the result is bit-reproducible). No grad is changed.
double global_grad_norm(const std::vector<Tensor>& params);

// Returns the pre-clip global norm. When it exceeds max_norm, every grad is replaced by
// grad * max_norm / (norm + 1e-6). max_norm <= 0 disables clipping (the norm is still
// returned). A non-finite norm leaves the grads untouched: the caller decides (skip the step).
double clip_grad_norm(const std::vector<Tensor>& params, double max_norm);

}  // namespace moe
