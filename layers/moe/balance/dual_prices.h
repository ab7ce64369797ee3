// Dual (price) iterations of the per-batch balanced-assignment problem, shared by BIP
// (inequality form, prices clipped at 0) and quantile balancing (equality form, no clipping).
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "layers/moe/balance/balancer.h"
#include "parallel/communicator.h"

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
// The same on scores already in double, [T, E] row-major.
void dual_price_iterations(const std::vector<double>& scores, int64_t T, int64_t E, int64_t k, int64_t cap, int iters,
                           bool clip, std::vector<float>& q);

// The iterations on the global batch of balance.scope = "global", capacity ceil(k T_global / E):
// comm == nullptr (or one rank) is dual_price_iterations on `scores` alone. Otherwise the
// experts' columns of every rank's scores are split over the ranks (share_columns); per
// iteration each rank computes p for its own tokens and q for its own experts, and two
// all-gathers (p: T_global values, q: E values) give every rank the same q, bit for bit the q
// of one process on the concatenated batch (every value is computed by the same arithmetic).
// Work and memory per rank: T_local x E for the token pass, T_global x E / W for the expert pass.
void batch_dual_price_iterations(Communicator* comm, const Tensor& scores, int64_t k, int iters, bool clip,
                                 std::vector<float>& q, const char* where);

// The device paths of BIP and quantile (Balancer::routes_on_device(): the batch is this
// process's own), on scores [T, E] fp32 on the cuda device:
// The prices after `iters` iterations from the host prices q (E floats go up), capacity
// ceil(k T / E) as batch_dual_price_iterations without a communicator: [E] fp32 on the device.
// fp32 math (CudaBackend::dual_price_iterations): within rounding of the host's double math.
Tensor device_dual_price_iterations(const Tensor& scores, int64_t k, int iters, bool clip,
                                    const std::vector<float>& q, const char* where);
// Top-k of s - prices per token (ties to the lower expert; the host's select_topk of
// shifted_scores(s, prices, -1), the same fp32 values), gates from the unshifted s with
// token_choice_gates(cfg) on the device: only the ids and values [T, k] come down.
Routing device_price_routing(const Tensor& scores, const std::vector<float>& prices, const MoeConfig& cfg);

}  // namespace moe
