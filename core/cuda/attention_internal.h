// Internal to the attention kernel sources (attention.cu, attention_tc.cu): where a head's rows
// live in memory, and the tensor-core forward that attention.cu dispatches bf16 to.
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

// The bf16 forward on tensor cores (wmma): same contract as flash_attention_forward.
void flash_forward_tensor_cores(const bf16* q, const bf16* k, const bf16* v, bf16* out, float* lse, long batch_heads,
                                long seq, int head_dim, HeadStrides hs, cudaStream_t stream);

}  // namespace moe::cuda::attention_detail
