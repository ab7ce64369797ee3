// The Switch / GShard auxiliary-loss product shared by aux_loss, null_experts and top_p:
// E * sum_i f_i * P_i, with f constant (assignment fractions) and P differentiable (mean scores).
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace moe {

// Probabilities the aux loss averages: the softmax scores as they are; sigmoid scores
// normalized per token (s / sum_j s), as DeepSeek-V3's sequence-wise loss does.
Tensor aux_probabilities(const Tensor& scores, bool sigmoid_scores);

// Unscaled Switch loss over one group of tokens: E * sum_i f_i * P_i where f_i = loads_i / total
// (a constant) and P_i = mean over rows of probs[:, i]. probs [T, E]; 0-dim result with grad.
Tensor switch_aux(const Tensor& probs, const std::vector<double>& loads, double total);

// DeepSeek's sequence-wise form: the same product per sequence of seq_len rows (f from each
// sequence's own loads, over k * seq_len assignments), averaged over sequences.
// seq_loads is [B * E] (sequence-major).
Tensor per_sequence_aux(const Tensor& probs, int64_t seq_len, const std::vector<double>& seq_loads,
                        double per_sequence_total);

}  // namespace moe
