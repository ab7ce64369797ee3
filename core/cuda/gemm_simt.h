// Dense GEMM on CUDA cores (shared-memory tiles, fp32 accumulation): the row-major contract of
// cuda::gemm (cublas_gemm.h) without a handle. The emulation runs dense products through it,
// since cuBLAS is not emulated; on a GPU the backend uses cuBLAS and this is the cross-check.
#pragma once
#include "core/cuda/runtime.h"
#include "core/dtype.h"

namespace moe::cuda {

// Row-major C [m, n] = alpha op(A) op(B) + beta C, op(A) [m, k], op(B) [k, n]; lda, ldb, ldc are
// the row strides of A, B, C as stored (A is [k, m] when trans_a, B is [n, k] when trans_b).
// beta = 0 never reads C (it may hold NaN). Tin: float or bf16; Tout: float or bf16 (the pairs
// cuda::gemm has: float/float, bf16/float, bf16/bf16); products accumulate in fp32.
template <class Tin, class Tout>
void gemm_simt(bool trans_a, bool trans_b, long m, long n, long k, float alpha, const Tin* a, long lda, const Tin* b,
               long ldb, float beta, Tout* c, long ldc, cudaStream_t stream = nullptr);

}  // namespace moe::cuda
