// Internal to the attention kernel sources (attention*.cu): where a head's rows live in memory,
// and the tensor-core forward and backward that attention.cu dispatches bf16 to.
#pragma once
#include "core/cuda/attention.h"
#include "core/cuda/kernel.h"

namespace moe::cuda::attention_detail {

// [B, H, S, Dh] (rows D apart, heads S * D apart) or [B, S, H, Dh] (rows H * D apart, heads D
// apart); a batch always spans S * H * D elements.
struct HeadStrides {
  long heads, head, row;
  __device__ long base(long head_index, long S, int D) const {
    return head_index / heads * S * heads * D + head_index % heads * head;
  }
};

inline HeadStrides strides_of(AttentionLayout layout, long heads, long seq, int D) {
  return layout == AttentionLayout::kBHSD ? HeadStrides{heads, seq * D, D} : HeadStrides{heads, D, heads * D};
}

// rows x dp bf16 of a head from row r0 into dst (row stride ld), zero past `valid` rows or D.
__device__ inline void load_rows(const dbf16* src, long rs, long r0, long valid, int rows, int D, int dp, dbf16* dst,
                                 int ld) {
  const dbf16 zero = from_float<dbf16>(0.0f);
  for (int i = threadIdx.x; i < rows * dp; i += blockDim.x) {
    const int r = i / dp, d = i % dp;
    dst[r * ld + d] = r < valid && d < D ? src[(r0 + r) * rs + d] : zero;
  }
}

// The bf16 forward on tensor cores (wmma): same contract as flash_attention_forward.
void flash_forward_tensor_cores(const bf16* q, const bf16* k, const bf16* v, bf16* out, float* lse, long batch_heads,
                                long seq, int head_dim, HeadStrides hs, cudaStream_t stream);

// The bf16 backward on tensor cores: dq, dk, dv from the forward's lse and delta = rowsum(dO O)
// [batch_heads, seq] (fp32), as flash_attention_backward.
void flash_backward_tensor_cores(const bf16* q, const bf16* k, const bf16* v, const bf16* dout, const float* lse,
                                 const float* delta, bf16* dq, bf16* dk, bf16* dv, long batch_heads, long seq,
                                 int head_dim, HeadStrides hs, cudaStream_t stream);

}  // namespace moe::cuda::attention_detail
