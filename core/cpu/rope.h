// Rotary position embedding (rotate-half convention of GPT-NeoX / Llama), forward and backward.
#pragma once
#include "core/tensor.h"

namespace moe {

// x [B, S, H, Dh] with Dh even. Position of (b, s) is pos_offset + s. Pair (i, i + Dh/2) is
// rotated by angle pos * theta^(-2i/Dh).
Tensor rope(const Tensor& x, double theta = 10000.0, int64_t pos_offset = 0);

}  // namespace moe
