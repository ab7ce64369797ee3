// Selections of the strategies that do not route by a fixed top-k, on device pointers: expert
// choice (each expert takes its top-C tokens) and top-p (per token the shortest score-sorted
// prefix reaching p), plus top-p's routing-entropy loss. Scores [tokens, experts] fp32, finite.
#pragma once
#include <cstdint>

#include "core/cuda/runtime.h"

namespace moe::cuda {

// chosen [tokens, experts] (0 / 1) marks, for each expert, its `capacity` highest-scoring tokens
// (ties to the lower token), as the expert_choice balancer. 1 <= capacity <= tokens.
void expert_choice_select(const float* scores, long tokens, int experts, long capacity, uint8_t* chosen,
                          cudaStream_t stream = nullptr);

// Per token, experts in descending score order (ties to the lower expert) while the running sum
// (double, in that order) of the taken scores is below p, so the one that reaches p is the last:
// ranked [tokens, experts] holds the taken experts then -1, counts [tokens] how many.
void top_p_select(const float* scores, long tokens, int experts, double p, int32_t* ranked, int32_t* counts,
                  cudaStream_t stream = nullptr);

// loss = mean over tokens of -sum_j s_tj log(s_tj + 1e-30) (fixed summation order); the backward
// dscores = -dloss (log(s + 1e-30) + s / (s + 1e-30)) / tokens.
void routing_entropy_forward(const float* scores, long tokens, int experts, float* loss, cudaStream_t stream = nullptr);
void routing_entropy_backward(const float* scores, float dloss, long tokens, int experts, float* dscores,
                              cudaStream_t stream = nullptr);

}  // namespace moe::cuda
