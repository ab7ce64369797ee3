// Causal multi-head scaled dot-product attention, forward and backward.
#pragma once
#include "core/tensor.h"

namespace moe {

// q, k, v [B, H, S, Dh] -> [B, H, S, Dh]; softmax(q k^T / sqrt(Dh) + causal mask) v.
Tensor causal_attention(const Tensor& q, const Tensor& k, const Tensor& v);

}  // namespace moe
