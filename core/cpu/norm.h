// RMSNorm over the last dim: y = x / sqrt(mean(x^2) + eps) * weight.
#pragma once
#include "core/tensor.h"

namespace moe {

Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps = 1e-5);

}  // namespace moe
