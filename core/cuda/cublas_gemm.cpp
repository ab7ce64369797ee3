// cuBLAS GEMM wrapper: a row-major product is the column-major product of the transposes,
// C^T = op(B)^T op(A)^T, so cuBLAS is called with the operands swapped. Every call is checked and
// a failure names it with the status string and the shape.
#include "core/cuda/cublas_gemm.h"

#include <cublas_v2.h>

#include <type_traits>

#include "core/cuda/kernel_profile.h"
#include "core/error.h"

namespace moe::cuda {
namespace {

cublasHandle_t native(const BlasHandle& h) { return static_cast<cublasHandle_t>(h.raw()); }

void check(cublasStatus_t status, const char* call) {
  if (status != CUBLAS_STATUS_SUCCESS) MOE_FAIL("cuBLAS", call, ": ", cublasGetStatusString(status));
}

template <class T>
cudaDataType_t data_type() {
  return std::is_same_v<T, bf16> ? CUDA_R_16BF : CUDA_R_32F;
}

}  // namespace

BlasHandle::BlasHandle() {
  cublasHandle_t h = nullptr;
  check(cublasCreate(&h), "cublasCreate");
  handle_ = h;
}

BlasHandle::~BlasHandle() {
  if (handle_) cublasDestroy(static_cast<cublasHandle_t>(handle_));
}

void BlasHandle::set_stream(cudaStream_t stream) { check(cublasSetStream(native(*this), stream), "cublasSetStream"); }

BlasHandle& default_blas_handle() {
  thread_local BlasHandle handle;
  return handle;
}

template <class Tin, class Tout>
void gemm(BlasHandle& handle, bool trans_a, bool trans_b, long m, long n, long k, float alpha, const Tin* a, long lda,
          const Tin* b, long ldb, float beta, Tout* c, long ldc) {
  MOE_CHECK(m >= 0 && n >= 0 && k >= 0 && ldc >= (n > 0 ? n : 1) &&
                lda >= ((trans_a ? m : k) > 0 ? (trans_a ? m : k) : 1) &&
                ldb >= ((trans_b ? k : n) > 0 ? (trans_b ? k : n) : 1),
            "cuda::gemm", "bad shape: m = ", m, ", n = ", n, ", k = ", k, ", lda = ", lda, ", ldb = ", ldb,
            ", ldc = ", ldc, " (trans_a ", trans_a, ", trans_b ", trans_b, ")");
  if (m == 0 || n == 0) return;
  cudaStream_t stream = nullptr;
  cublasGetStream(native(handle), &stream);
  const KernelTimer timer("cublasGemmEx", stream);  // MOE_KERNEL_PROFILE=1 only
  const cublasStatus_t status =
      cublasGemmEx(native(handle), trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, int(n),
                   int(m), int(k), &alpha, b, data_type<Tin>(), int(ldb), a, data_type<Tin>(), int(lda), &beta, c,
                   data_type<Tout>(), int(ldc), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  if (status != CUBLAS_STATUS_SUCCESS)
    MOE_FAIL("cuBLAS", "cublasGemmEx (m = ", m, ", n = ", n, ", k = ", k, "): ", cublasGetStatusString(status));
}

template void gemm<float, float>(BlasHandle&, bool, bool, long, long, long, float, const float*, long, const float*,
                                 long, float, float*, long);
template void gemm<bf16, float>(BlasHandle&, bool, bool, long, long, long, float, const bf16*, long, const bf16*, long,
                                float, float*, long);
template void gemm<bf16, bf16>(BlasHandle&, bool, bool, long, long, long, float, const bf16*, long, const bf16*, long,
                               float, bf16*, long);

}  // namespace moe::cuda
