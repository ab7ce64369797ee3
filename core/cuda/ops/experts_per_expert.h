// The SwiGLU experts through one dense GEMM per expert and product (dense_gemm: cuBLAS on a GPU,
// the SIMT kernel under the emulation), the alternative to the grouped kernel of grouped_gemm.h
// (experts_forward / experts_backward), and the rule that picks between the two. Implemented in
// moe_ops.cpp (the MoE layer's device path); declared here for bench/cuda/experts_bench.cpp,
// which times both against each other.
#pragma once
#include <cstdint>
#include <vector>

#include "core/dtype.h"

namespace moe::cuda {

// Whether the MoE layer multiplies `rows` rows over `experts` experts of width d_model and hidden
// size `hidden` with the grouped kernel (true) or per expert (false); moe_ops.cpp says how it
// decides. The environment variable MOE_EXPERT_GEMM = grouped | per_expert overrides it.
bool use_grouped_kernel(int64_t rows, int64_t experts, int64_t d_model, int64_t hidden);

// x [N, D] in expert groups (host offsets [E + 1]), w1 / w3 [E, H, D], w2 [E, D, H], all bf16:
// h1 = x w1_e^T, h3 = x w3_e^T, h = silu(h1) h3, y = h w2_e^T (bf16, fp32 accumulation).
void experts_forward_per_expert(const bf16* x, const bf16* w1, const bf16* w3, const bf16* w2,
                                const std::vector<int64_t>& off, long D, long H, bf16* h1, bf16* h3, bf16* h, bf16* y);

// From dy [N, D]: dx [N, D] in fp32 (the w1 and w3 paths summed in fp32) and the weight grads
// d1, d3 [E, H, D], d2 [E, D, H] in fp32; an expert without rows leaves its grads alone (the
// caller zeroes them). dh, dh1, dh3 [N, H] (bf16) are the caller's scratch.
void experts_backward_per_expert(const bf16* x, const bf16* w1, const bf16* w3, const bf16* w2,
                                 const std::vector<int64_t>& off, long D, long H, const bf16* h1, const bf16* h3,
                                 const bf16* h, const bf16* dy, float* dx, float* d1, float* d3, float* d2, bf16* dh,
                                 bf16* dh1, bf16* dh3);

}  // namespace moe::cuda
