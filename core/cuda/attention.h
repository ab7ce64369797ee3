// Causal flash attention on device pointers ([B, H, S, Dh] as core/cpu causal_attention, or [B, S, H, Dh]):
// forward with an online softmax that saves the per-row logsumexp, backward recomputing P from it.
#pragma once
#include "core/cuda/runtime.h"
#include "core/dtype.h"

namespace moe::cuda {

// The largest head dimension the kernels keep in shared memory (fits the default 48 KiB).
constexpr int kFlashMaxHeadDim = 128;

// Where heads live: [B, H, S, Dh] as core/cpu causal_attention, or [B, S, H, Dh] as the rope
// kernels and a fused QKV projection produce it (no transposes needed).
enum class AttentionLayout { kBHSD, kBSHD };

// q, k, v, out in `layout` (T = float or bf16 storage, fp32 math);
// out = softmax(q k^T / sqrt(Dh) + causal mask) v and lse [batch, heads, seq] (fp32, whatever the
// layout) the natural log of each row's softmax denominator of the scaled scores.
template <class T>
void flash_attention_forward(const T* q, const T* k, const T* v, T* out, float* lse, long batch, long heads, long seq,
                             int head_dim, AttentionLayout layout = AttentionLayout::kBHSD,
                             cudaStream_t stream = nullptr);

// dq, dk, dv (overwritten, same layout) from dout, the forward's out and lse. Deterministic: dK /
// dV are summed by one block per key tile and dQ by one block per query tile (no float atomics).
template <class T>
void flash_attention_backward(const T* q, const T* k, const T* v, const T* out, const float* lse, const T* dout, T* dq,
                              T* dk, T* dv, long batch, long heads, long seq, int head_dim,
                              AttentionLayout layout = AttentionLayout::kBHSD, cudaStream_t stream = nullptr);

// Whether the bf16 kernels stream their K / V (forward, dQ) and Q / dO (dK / dV) tiles through
// cp.async double buffers (the same arithmetic, so the same bits as the synchronous tiles):
// MOE_FLASH_ASYNC=1 on, =0 off, unset on from sm_90 (an H100 measured the forward and dQ 1.7-1.9x
// faster, dK / dV 1.2x: docs/benchmarks.md) and off before it (sm_80 unmeasured: at Dh 128 an A100
// holds one 102 KiB block per SM). Read at every call.
bool flash_async_tiles();

}  // namespace moe::cuda
