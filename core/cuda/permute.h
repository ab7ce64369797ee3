// Token permutation for the experts on device pointers: a stable grouping of the (token, slot)
// assignments by expert, the row gather into that order, and the gate-weighted un-permute.
#pragma once
#include <cstdint>

#include "core/cuda/runtime.h"
#include "core/dtype.h"

namespace moe::cuda {

// expert_ids [n] (n = tokens * k, assignment a = token * k + slot; ids outside [0, experts) are
// dropped). Outputs: offsets [experts + 1] (expert e owns positions offsets[e] .. offsets[e+1]),
// dest [n] (position of assignment a, -1 when dropped), source [n] (assignment at position p, for
// p < offsets[experts]). Within an expert, assignments keep their order (stable).
void permute_plan(const int32_t* expert_ids, long n, int experts, int32_t* offsets, int32_t* dest, int32_t* source,
                  cudaStream_t stream = nullptr);

// out [n, dim]: row p = x[source[p] / k] for p < offsets[experts] (later rows untouched).
template <class T>
void permute_rows(const T* x, const int32_t* source, const int32_t* offsets, int experts, long n, int k, long dim,
                  T* out, cudaStream_t stream = nullptr);

// y [tokens, dim] = sum_s gates[t*k+s] * expert_out[dest[t*k+s]] (gates may be null: weight 1,
// which is also the backward of permute_rows). Slots are summed in order: deterministic.
template <class T>
void unpermute_combine(const T* expert_out, const int32_t* dest, const float* gates, long tokens, int k, long dim, T* y,
                       cudaStream_t stream = nullptr);
// Backward of unpermute_combine: d_expert_out[dest[a]] = gates[a] * dy[token] and
// d_gates[a] = <dy[token], expert_out[dest[a]]> (0 for dropped assignments).
template <class T>
void unpermute_combine_backward(const T* dy, const T* expert_out, const int32_t* dest, const float* gates, long tokens,
                                int k, long dim, T* d_expert_out, float* d_gates, cudaStream_t stream = nullptr);

}  // namespace moe::cuda
