// Routing kernels on device pointers: per-token top-k over the experts (sorted descending, ties to
// the lower expert index, as the CPU topk) and the per-expert load histogram.
#pragma once
#include <cstdint>

#include "core/cuda/runtime.h"

namespace moe::cuda {

// scores [tokens, experts] fp32 -> values, indices [tokens, k]. 1 <= k <= experts.
void router_topk(const float* scores, float* values, int32_t* indices, long tokens, int experts, int k,
                 cudaStream_t stream = nullptr);
// As router_topk, ranking scores + bias (bias [experts] fp32, added in fp32 as the CPU's
// shifted_scores): the loss-free balancer's selection. values are the shifted scores s + b.
void router_topk_biased(const float* scores, const float* bias, float* values, int32_t* indices, long tokens,
                        int experts, int k, cudaStream_t stream = nullptr);
// counts [experts] (overwritten) = how many of the n ids name each expert; ids outside
// [0, experts) (e.g. -1 for a token dropped by capacity) are not counted.
void load_histogram(const int32_t* ids, long n, int experts, int32_t* counts, cudaStream_t stream = nullptr);

}  // namespace moe::cuda
