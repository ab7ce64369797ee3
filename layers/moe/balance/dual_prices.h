// Dual (price) iterations of the per-batch balanced-assignment problem, shared by BIP
// (inequality form, prices clipped at 0) and quantile balancing (equality form, no clipping).
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace moe {

// Per-expert capacity of the balanced problem: ceil(k T / E) (kT/E rounded up, so that the
// capacities always admit every token's k choices when E does not divide kT).
int64_t balanced_capacity(int64_t tokens, int64_t experts, int64_t k);

// `iters` rounds, starting from the prices q [E] (updated in place), of
//   p_i = (k+1)-th largest over j of (s_ij - q_j)        for each token i
//   q_j = (cap+1)-th largest over i of (s_ij - p_i)      for each expert j
// with max(0, .) applied to both when `clip` (BIP, arXiv 2502.15451). The orders are capped at
// E and T (the smallest value is taken when k + 1 > E or cap + 1 > T). Math in double, q stored
// as fp32 at the end.
void dual_price_iterations(const Tensor& scores, int64_t k, int64_t cap, int iters, bool clip, std::vector<float>& q);
// The same on scores already in double, [T, E] row-major (the global batch of gather_rows).
void dual_price_iterations(const std::vector<double>& scores, int64_t T, int64_t E, int64_t k, int64_t cap, int iters,
                           bool clip, std::vector<float>& q);

}  // namespace moe
