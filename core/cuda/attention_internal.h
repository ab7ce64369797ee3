// Internal to the attention kernel sources (attention*.cu): where a head's rows live in memory,
// and the tensor-core forward and backward that attention.cu dispatches bf16 to.
#pragma once
#include "core/cuda/attention.h"
#include "core/cuda/kernel.h"

#ifdef MOE_CUDA_EMULATION
#include <cstring>
#endif

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

// 16 bytes from src to dst (both 16-byte aligned): one vector load and store on the GPU.
__device__ __forceinline__ void copy16(void* dst, const void* src) {
#ifdef MOE_CUDA_EMULATION
  std::memcpy(dst, src, 16);
#else
  *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
#endif
}

// rows x dp bf16 of a head from row r0 into dst (row stride ld, a multiple of 8), zero past
// `valid` rows or D. Each thread moves 8-element (16-byte) chunks; with `vec` (D % 8 == 0 and
// src 16-byte aligned, so every row start is) a full chunk is one vector copy.
__device__ inline void load_rows(const dbf16* src, long rs, long r0, long valid, int rows, int D, int dp, dbf16* dst,
                                 int ld, bool vec = false) {
  const dbf16 zero = from_float<dbf16>(0.0f);
  const int chunks = dp / 8;
  for (int i = threadIdx.x; i < rows * chunks; i += blockDim.x) {
    const int r = i / chunks, d0 = i % chunks * 8;
    dbf16* out = dst + r * ld + d0;
    const dbf16* in = src + (r0 + r) * rs + d0;
    if (vec && r < valid && d0 + 8 <= D) {
      copy16(out, in);
    } else {
      for (int j = 0; j < 8; ++j) out[j] = r < valid && d0 + j < D ? in[j] : zero;
    }
  }
}

// The bf16 forward on tensor cores (mma.sync, registers): same contract as flash_attention_forward.
void flash_forward_tensor_cores(const bf16* q, const bf16* k, const bf16* v, bf16* out, float* lse, long batch_heads,
                                long seq, int head_dim, HeadStrides hs, cudaStream_t stream);

// The bf16 backward on tensor cores: dq, dk, dv from the forward's lse and delta = rowsum(dO O)
// [batch_heads, seq] (fp32), as flash_attention_backward.
void flash_backward_tensor_cores(const bf16* q, const bf16* k, const bf16* v, const bf16* dout, const float* lse,
                                 const float* delta, bf16* dq, bf16* dk, bf16* dv, long batch_heads, long seq,
                                 int head_dim, HeadStrides hs, cudaStream_t stream);

}  // namespace moe::cuda::attention_detail
