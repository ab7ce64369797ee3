// Combine weights of token-choice routing on device pointers, as build_routing on the CPU: the
// selected scores, optionally renormalized per token over its real experts, times a scale; and
// the backward into the scores (with renormalize = false and scale = 1: top-k's backward).
#pragma once
#include <cstdint>

#include "core/cuda/runtime.h"

namespace moe::cuda {

// scores [tokens, cols] (fp32), indices [tokens, k] (e.g. router_topk's). A slot whose index is
// outside [0, valid_experts) (a null expert, or -1) is dropped: gate 0. Otherwise
//   gate = scale * s_id                      or, when renormalize,
//   gate = scale * s_id / sum_kept s         (the sum over the token's kept slots).
void gates_forward(const float* scores, const int32_t* indices, long tokens, int cols, int k, int valid_experts,
                   bool renormalize, float scale, float* gates, cudaStream_t stream = nullptr);
// dscores [tokens, cols] (overwritten; zero where nothing was selected) from dgates [tokens, k].
void gates_backward(const float* scores, const int32_t* indices, const float* dgates, long tokens, int cols, int k,
                    int valid_experts, bool renormalize, float scale, float* dscores, cudaStream_t stream = nullptr);

}  // namespace moe::cuda
