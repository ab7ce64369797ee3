// The per-batch sums behind the routing statistics (layers/moe/routing_stats.h) on device
// pointers, so a layer routed on the device copies E + 2 numbers down instead of its [T, E]
// scores and logits.
#pragma once
#include "core/cuda/runtime.h"

namespace moe::cuda {

// scores [tokens, score_cols], logits [tokens, logit_cols] fp32 row-major, experts <= logit_cols.
// Writes out [experts + 2] (fp64, device):
//   out[j]           sum over tokens of logits[t, j] (j < experts)
//   out[experts]     sum over tokens of the entropy -sum_j p log p of the token's scores
//                    renormalized to sum 1 (rows summing to <= 0 add 0; entries <= 0 add nothing)
//   out[experts + 1] the first flat index t * score_cols + j of a NaN score, or -1
// Sums in fp64, per block of tokens and then over the blocks in order: deterministic.
void router_stat_sums(const float* scores, const float* logits, long tokens, int score_cols, int logit_cols,
                      int experts, double* out, cudaStream_t stream = nullptr);

}  // namespace moe::cuda
