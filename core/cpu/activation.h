// Activations: sigmoid, SiLU and the SwiGLU product silu(gate) * up.
#pragma once
#include "core/tensor.h"

namespace moe {

Tensor sigmoid(const Tensor& x);
Tensor silu(const Tensor& x);
Tensor swiglu(const Tensor& gate, const Tensor& up);  // same shapes

}  // namespace moe
