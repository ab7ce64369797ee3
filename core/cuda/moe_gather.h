// Row gathers of the MoE layer's dispatch on device pointers, driven by the host-made dispatch
// plan (layers/moe/dispatch.h) uploaded as int32 arrays: variable slots per token (CSR).
#pragma once
#include <cstdint>

#include "core/cuda/runtime.h"
#include "core/dtype.h"

namespace moe::cuda {

// out [rows, dim]: row p = x[index[p]] (the permute: index = the plan's token of each sorted
// position).
template <class T>
void gather_rows(const T* x, const int32_t* index, long rows, long dim, T* out, cudaStream_t stream = nullptr);

// out [tokens, dim]: row t = sum over s in [row_offsets[t], row_offsets[t+1]) of
// w(p) * src[p], p = slots[s], in slot order with fp32 accumulation (deterministic); a token
// without slots gets zeros. w(p) = gates[gate_index[p]] when gates is not null, else 1 (then
// the permute's backward: each token's rows summed). The plan's token_offsets / token_slots /
// order give the gate-weighted un-permute + combine.
template <class T>
void csr_combine(const T* src, const int32_t* row_offsets, const int32_t* slots, const int32_t* gate_index,
                 const float* gates, long tokens, long dim, T* out, cudaStream_t stream = nullptr);

// Backward of csr_combine with gates, one block per sorted position p < rows:
//   d_src[p] = gates[gate_index[p]] * dy[token[p]]                      (in T)
//   d_gates[gate_index[p]] = <dy[token[p]], src[p]>  (fp32 dot product; entries that no position
//   names, the dropped assignments, are left untouched: zero them first).
// Either output may be null (not wanted).
template <class T>
void csr_combine_backward(const T* dy, const T* src, const int32_t* token, const int32_t* gate_index,
                          const float* gates, long rows, long dim, T* d_src, float* d_gates,
                          cudaStream_t stream = nullptr);

// Element gathers of fp32 vectors (a ragged routing's gates, core/cuda/ops/gather_ops.cpp), one
// thread per element: out[a] = x[index[a]]; and its backward, dx[index[a]] = dout[a] with the
// index entries distinct (entries no index names are left untouched: zero dx first).
void gather_elements(const float* x, const int32_t* index, long n, float* out, cudaStream_t stream = nullptr);
void scatter_elements(const float* dout, const int32_t* index, long n, float* dx, cudaStream_t stream = nullptr);

}  // namespace moe::cuda
