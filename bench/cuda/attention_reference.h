// Unfused causal attention through cuBLAS, as PyTorch's "math" SDPA computes it: the reference
// BM_FlashAttentionBf16 compares the flash kernels with in the same run (speed and output).
// Per head: scores = Q K^T / sqrt(Dh) (strided-batched GEMM, bf16 in, fp32 out), + a precomputed
// additive causal mask (-inf above the diagonal), row softmax in fp32, cast to bf16, O = P V (a
// second strided-batched GEMM, bf16 out). GPU build only (cuBLAS is not emulated).
#pragma once
#include <cstddef>

#include "core/cuda/memory.h"
#include "core/dtype.h"

namespace moe::bench {

// One cublasGemmStridedBatchedEx call in cuBLAS's column-major terms: per batch entry i,
// C_i (m x n, ldc) = alpha op(A_i) op(B_i) + beta C_i with op(A_i) m x k, op(B_i) k x n and
// X_i = X + i * stride_x (elements).
struct StridedBatchedGemm {
  bool trans_a, trans_b;
  int m, n, k;
  int lda, ldb, ldc;
  long long stride_a, stride_b, stride_c;
  int batch;
  float alpha, beta;
};

// The transposition reasoning of both products. Every per-head matrix is row-major and contiguous
// ([B, H, S, Dh] storage: head i = b * H + h starts at i * S * Dh), and a row-major r x c matrix
// with row stride c is, to cuBLAS, the column-major c x r matrix (its transpose) with ld = c. So
// Q, K, V per head are the column-major Dh x S matrices Q^T, K^T, V^T (ld Dh), and a row-major
// result C is obtained by asking cuBLAS for C^T.
//
// Scores [S, S] row-major (scores[i][j] = q_i . k_j / sqrt(Dh), i the query, j the key) as
// column-major: scores^T = K Q^T (S x S, ld S; entry (j, i) at j + i * S == i * S + j).
// A = K's storage (column-major K^T, Dh x S) with op = T gives K (S x Dh): trans_a, lda = Dh;
// B = Q's storage (column-major Q^T, Dh x S) with op = N: ldb = Dh; m = n = S, k = Dh.
// Call with a = K, b = Q, c = scores (fp32).
inline StridedBatchedGemm scores_gemm(long heads_total, long seq, int head_dim, float scale) {
  const long long sd = (long long)seq * head_dim, ss = (long long)seq * seq;
  return {true, false, int(seq), int(seq), head_dim, head_dim, head_dim, int(seq), sd, sd, ss,
          int(heads_total), scale, 0.0f};
}
// O [S, Dh] row-major = P [S, S] V [S, Dh]; as column-major O^T (Dh x S, ld Dh) = V^T P^T.
// A = V's storage (column-major V^T, Dh x S): op = N, lda = Dh; B = P's storage (row-major [S, S]
// = column-major P^T, S x S): op = N, ldb = S; m = Dh, n = S, k = S.
// Call with a = V, b = P (bf16), c = out (bf16).
inline StridedBatchedGemm output_gemm(long heads_total, long seq, int head_dim) {
  const long long sd = (long long)seq * head_dim, ss = (long long)seq * seq;
  return {false, false, head_dim, int(seq), int(seq), head_dim, int(seq), head_dim, sd, ss, sd,
          int(heads_total), 1.0f, 0.0f};
}

// The causal attention of q, k, v [B, H, S, Dh] (bf16) into out (bf16), same layout and scale as
// cuda::flash_attention_forward's kBHSD; on the default stream, through cuda::default_blas_handle().
class CausalAttentionReference {
 public:
  // Device memory it holds: the fp32 scores and mask [B * H, S, S] and the bf16 P [B * H, S, S].
  static size_t workspace_bytes(long batch, long heads, long seq);
  CausalAttentionReference(long batch, long heads, long seq, int head_dim);
  void forward(const bf16* q, const bf16* k, const bf16* v, bf16* out);

 private:
  long bh_, seq_;
  int head_dim_;
  cuda::DeviceBuffer<float> scores_, mask_;
  cuda::DeviceBuffer<bf16> probs_;
};

}  // namespace moe::bench
