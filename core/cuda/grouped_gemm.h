// Grouped expert GEMMs on tensor cores (bf16 operands, fp32 accumulation) over rows grouped by
// expert, and the SwiGLU experts' forward and backward built from them (as layers/moe/experts).
#pragma once
#include <cstdint>

#include "core/cuda/runtime.h"
#include "core/dtype.h"

namespace moe::cuda {

// Rows [0, rows) are grouped by expert: expert e owns rows offsets[e] .. offsets[e+1] (device
// int32 [experts + 1], non-decreasing from 0 to rows, as permute_plan writes them; not checked on
// the device). w [experts, M, K] row-major. Tout = float or bf16; `accumulate` adds to out.
//   nt:  y[r, :]  (+)= x[r, :] w[e]^T        x [rows, K] -> y [rows, M]   (the forward)
//   nn:  dx[r, :] (+)= dy[r, :] w[e]         dy [rows, M] -> dx [rows, K] (input gradient)
//   tn:  dw[e]    (+)= dy_e^T x_e            dy [rows, M], x [rows, K] -> dw [experts, M, K]
//        (an expert without rows gets zeros, or is left as it was when accumulating)
template <class Tout>
void grouped_gemm_nt(const bf16* x, const bf16* w, const int32_t* offsets, int experts, long rows, long M, long K,
                     Tout* y, bool accumulate = false, cudaStream_t stream = nullptr);
template <class Tout>
void grouped_gemm_nn(const bf16* dy, const bf16* w, const int32_t* offsets, int experts, long rows, long M, long K,
                     Tout* dx, bool accumulate = false, cudaStream_t stream = nullptr);
template <class Tout>
void grouped_gemm_tn(const bf16* dy, const bf16* x, const int32_t* offsets, int experts, long rows, long M, long K,
                     Tout* dw, bool accumulate = false, cudaStream_t stream = nullptr);

// SwiGLU experts, w1, w3 [E, H, D] and w2 [E, D, H] (bf16): h1 = x w1^T, h3 = x w3^T,
// h = silu(h1) * h3, y = h w2^T. h1, h3, h [rows, H] (bf16) are kept for the backward.
void experts_forward(const bf16* x, const bf16* w1, const bf16* w3, const bf16* w2, const int32_t* offsets, int experts,
                     long rows, long d_model, long hidden, bf16* h1, bf16* h3, bf16* h, bf16* y,
                     cudaStream_t stream = nullptr);
// From dy [rows, D]: dx [rows, D] (bf16, summed in fp32 over the w1 and w3 paths) and the weight
// gradients dw1, dw3 [E, H, D], dw2 [E, D, H] in fp32 (overwritten).
void experts_backward(const bf16* x, const bf16* w1, const bf16* w3, const bf16* w2, const int32_t* offsets,
                      int experts, long rows, long d_model, long hidden, const bf16* h1, const bf16* h3, const bf16* h,
                      const bf16* dy, bf16* dx, float* dw1, float* dw3, float* dw2, cudaStream_t stream = nullptr);

}  // namespace moe::cuda
