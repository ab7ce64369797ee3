// The cuBLAS reference of the flash attention benchmark (attention_reference.h). core/cuda/cublas_gemm.h
// has no strided-batched entry, so cublasGemmStridedBatchedEx is called here; the mask, softmax and
// cast are the library's kernels, so the reference costs what the unfused path of this library would.
#include "bench/cuda/attention_reference.h"

#include <cublas_v2.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "core/cuda/copy.h"
#include "core/cuda/cublas_gemm.h"
#include "core/cuda/elementwise.h"
#include "core/cuda/softmax.h"
#include "core/error.h"

namespace moe::bench {
namespace {

void run_gemm(const StridedBatchedGemm& g, const void* a, const void* b, cudaDataType_t in_type, void* c,
              cudaDataType_t out_type) {
  auto handle = static_cast<cublasHandle_t>(cuda::default_blas_handle().raw());
  const cublasStatus_t status = cublasGemmStridedBatchedEx(
      handle, g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, g.m, g.n, g.k, &g.alpha,
      a, in_type, g.lda, g.stride_a, b, in_type, g.ldb, g.stride_b, &g.beta, c, out_type, g.ldc, g.stride_c, g.batch,
      CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  if (status != CUBLAS_STATUS_SUCCESS)
    MOE_FAIL("attention reference", "cublasGemmStridedBatchedEx (m = ", g.m, ", n = ", g.n, ", k = ", g.k,
             ", batch = ", g.batch, "): ", cublasGetStatusString(status));
}

}  // namespace

size_t CausalAttentionReference::workspace_bytes(long batch, long heads, long seq) {
  return size_t(batch) * heads * seq * seq * (2 * sizeof(float) + sizeof(bf16));
}

// The mask is materialized for every head ([B * H, S, S], not [S, S]) because cuda::add does not
// broadcast and one add per head would be B * H launches: the reference therefore reads one fp32
// [B * H, S, S] array more per call than PyTorch's broadcast add of an [S, S] bias (which stays in
// L2). Built once here, outside the timed calls: the [S, S] pattern on the host, copied to every
// head by one strided copy whose source steps 0 between heads.
CausalAttentionReference::CausalAttentionReference(long batch, long heads, long seq, int head_dim)
    : bh_(batch * heads),
      seq_(seq),
      head_dim_(head_dim),
      scores_(size_t(bh_) * seq * seq),
      mask_(size_t(bh_) * seq * seq),
      probs_(size_t(bh_) * seq * seq) {
  MOE_CHECK(batch > 0 && heads > 0 && seq > 0 && head_dim > 0 && seq <= std::numeric_limits<int>::max(),
            "attention reference", "bad shape: batch ", batch, ", heads ", heads, ", seq ", seq, ", head_dim ",
            head_dim);
  std::vector<float> pattern(size_t(seq) * seq, 0.0f);
  for (long i = 0; i < seq; ++i)  // query i sees keys 0..i
    for (long j = i + 1; j < seq; ++j) pattern[size_t(i) * seq + j] = -std::numeric_limits<float>::infinity();
  const cuda::DeviceBuffer<float> one_head(pattern);
  const int64_t shape[3] = {bh_, seq, seq};
  cuda::StridedView dst{mask_.get(), DType::f32, {seq * seq, seq, 1}};
  const cuda::StridedView src{const_cast<float*>(one_head.get()), DType::f32, {0, seq, 1}};
  cuda::strided_copy(dst, src, shape, 3);
  cuda::device_synchronize();  // before one_head is freed
}

void CausalAttentionReference::forward(const bf16* q, const bf16* k, const bf16* v, bf16* out) {
  const size_t n = scores_.size();
  run_gemm(scores_gemm(bh_, seq_, head_dim_, 1.0f / std::sqrt(float(head_dim_))), k, q, CUDA_R_16BF, scores_.get(),
           CUDA_R_32F);
  cuda::add<float>(scores_.get(), mask_.get(), scores_.get(), n);
  // In place: each thread reads its elements of the row before it writes them, after the reductions.
  cuda::softmax_forward<float>(scores_.get(), scores_.get(), bh_ * seq_, seq_);
  cuda::cast_f32_to_bf16(scores_.get(), probs_.get(), n);
  run_gemm(output_gemm(bh_, seq_, head_dim_), v, probs_.get(), CUDA_R_16BF, out, CUDA_R_16BF);
}

}  // namespace moe::bench
