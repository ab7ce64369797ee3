// MOE_GROUPED_GEMM=wgmma4 / wgmma5: the Hopper grouped GEMMs on TMA + a warp-specialized mbarrier
// pipeline (grouped_gemm_sm90_tma.cu; `pingpong`: wgmma5, the consumer warpgroups on separate
// tiles), reached through grouped_gemm_sm90.h's entry points, which check the operands' alignment
// first (the same contract as the other wgmma kernels': 16-byte aligned bases, row strides a
// multiple of 8 elements, which is also what a TMA tensor map needs).
#pragma once
#include <cstdint>

#include "core/cuda/runtime.h"
#include "core/dtype.h"

namespace moe::cuda {

template <bool kTransB, class Tout>
void grouped_rows_sm90_tma(const bf16* A, const bf16* B, const int32_t* offsets, const int32_t* tile_starts,
                           int experts, long rows, long n_out, long k_red, Tout* C, bool accumulate, bool pingpong,
                           cudaStream_t stream);

template <class Tout>
void grouped_gemm_tn_sm90_tma(const bf16* dy, const bf16* x, const int32_t* offsets, int experts, long M, long K,
                              Tout* dw, bool accumulate, bool pingpong, cudaStream_t stream);

}  // namespace moe::cuda
