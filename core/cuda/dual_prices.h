// Dual (price) iterations of the balanced-assignment problem on device pointers, as the CPU
// dual_price_iterations (layers/moe/balance/dual_prices.h) of the BIP and quantile balancers.
#pragma once
#include <cstdint>

#include "core/cuda/runtime.h"

namespace moe::cuda {

// `iters` rounds on scores [tokens, experts] (fp32), from the prices q [experts] (device, updated
// in place), of
//   p_i = (k+1)-th largest over j of (s_ij - q_j)       (one warp per token)
//   q_j = (cap+1)-th largest over i of (s_ij - p_i)     (one block per expert, radix select)
// with max(0, .) on both when `clip` (BIP); orders are capped at experts and tokens. fp32 math:
// each selected value is one exact difference, so results match the CPU's double math to rounding.
void dual_price_iterations(const float* scores, long tokens, int experts, int k, long cap, int iters, bool clip,
                           float* q, cudaStream_t stream = nullptr);

// The selection of BIP: top-k over experts of s_ij - q_j per token (descending, ties to the lower
// expert), values [tokens, k] = the shifted scores, indices [tokens, k].
void price_shifted_topk(const float* scores, const float* q, long tokens, int experts, int k, float* values,
                        int32_t* indices, cudaStream_t stream = nullptr);

// The quantile balancer's step toward the dual prices (layers/moe/balance/quantile.cpp), beta and
// target [experts] on the device: next = beta + rate (target - beta) in double, then beta = next
// - mean(next) (rounded to fp32), so the prices stay centred; the CPU's arithmetic, step for step.
void quantile_beta_update(float* beta, const float* target, int experts, double rate, cudaStream_t stream = nullptr);

}  // namespace moe::cuda
