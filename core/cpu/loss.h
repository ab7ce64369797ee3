// Fused cross-entropy: log-softmax and NLL in one pass, mean over targets != ignore_index.
#pragma once
#include "core/tensor.h"

namespace moe {

constexpr int64_t kIgnoreIndex = -100;

// logits [N, V] (f32/f64), targets [N] (i32 or i64). Returns a 0-dim mean loss; 0 when every
// target is ignored. A target outside [0, V) that is not ignore_index is an error.
Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index = kIgnoreIndex);

}  // namespace moe
