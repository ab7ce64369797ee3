// The backend's one dense GEMM: cuBLAS on a GPU, the hand-written SIMT kernel (gemm_simt.h) under
// the emulation, which does not emulate cuBLAS. Used by the dense ops and the per-expert path of
// the MoE experts.
#pragma once
#include "core/cuda/gemm_simt.h"
#ifndef MOE_CUDA_EMULATION
#include "core/cuda/cublas_gemm.h"
#endif

namespace moe::cuda {

// Row-major C [m, n] = alpha op(A) op(B) + beta C (cuda::gemm's contract). Callers handle k = 0
// themselves (no product to run: C is left as it is).
template <class Tin, class Tout>
inline void dense_gemm(bool ta, bool tb, long m, long n, long k, float alpha, const Tin* a, long lda, const Tin* b,
                       long ldb, float beta, Tout* c, long ldc) {
  if (m == 0 || n == 0 || k == 0) return;
#ifdef MOE_CUDA_EMULATION
  gemm_simt<Tin, Tout>(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
#else
  // One cuBLAS handle per host thread, created on first use (cublas_gemm.h).
  gemm<Tin, Tout>(default_blas_handle(), ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
#endif
}

}  // namespace moe::cuda
