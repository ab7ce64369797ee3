// Causal multi-head scaled dot-product attention, forward and backward.
#pragma once
#include "core/tensor.h"

namespace moe {

// q, k, v [B, H, S, Dh] -> [B, H, S, Dh]; softmax(q k^T / sqrt(Dh) + causal mask) v.
// Any view whose last dim is unit-stride is read in place; other layouts are copied once.
Tensor causal_attention(const Tensor& q, const Tensor& k, const Tensor& v);

// The same on the [B, S, H, Dh] layout a projection's reshaped output has: q, k, v [B, S, H, Dh]
// -> [B, S, H, Dh], and the input grads come back in that layout. Each head is read in place as
// a matrix with leading dimension H Dh, so the layer needs no transposes or copies around it.
Tensor causal_attention_bshd(const Tensor& q, const Tensor& k, const Tensor& v);

// Training keeps the softmax probabilities P for the backward when all heads' P together take at
// most this many bytes (default 64 MiB), else the backward recomputes P from the saved
// logsumexp. Returns the previous budget; tests and benchmarks set 0 to force recomputation.
int64_t set_attention_saved_probs_budget(int64_t bytes);

}  // namespace moe
