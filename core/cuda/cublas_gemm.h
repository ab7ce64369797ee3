// Dense GEMM through cuBLAS (cublasGemmEx, fp32 compute; bf16 or fp32 operands and output) with
// an RAII handle. GPU build only: the emulation does not emulate cuBLAS and defines none of this.
#pragma once
#include "core/cuda/runtime.h"
#include "core/dtype.h"

namespace moe::cuda {

// Owns a cublasHandle_t (kept opaque here so that this header needs no cuBLAS include).
class BlasHandle {
 public:
  BlasHandle();  // cublasCreate; throws moe::Error naming the call and the status
  ~BlasHandle();
  BlasHandle(const BlasHandle&) = delete;
  BlasHandle& operator=(const BlasHandle&) = delete;
  void set_stream(cudaStream_t stream);
  void* raw() const { return handle_; }

 private:
  void* handle_ = nullptr;
};

// One handle per host thread, created on first use.
BlasHandle& default_blas_handle();

// Row-major C [m, n] = alpha op(A) op(B) + beta C, op(A) [m, k], op(B) [k, n]; lda, ldb, ldc are
// row strides of A, B, C as stored. Tin, Tout: float or bf16; products accumulate in fp32.
template <class Tin, class Tout>
void gemm(BlasHandle& handle, bool trans_a, bool trans_b, long m, long n, long k, float alpha, const Tin* a, long lda,
          const Tin* b, long ldb, float beta, Tout* c, long ldc);

}  // namespace moe::cuda
