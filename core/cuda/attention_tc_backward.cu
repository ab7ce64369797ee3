// The bf16 flash-attention backward on tensor cores, deterministic like the fp32 one: dK / dV by
// one block per 64-key tile (each warp owns 16 keys; query tiles of 32 rows), dQ by one block per
// 64-row tile (each warp owns 16 rows). P is recomputed from the saved logsumexp; S, dP and every
// product are wmma (bf16 operands, fp32 accumulation); dS = P (dP - delta) uses the fp32 P.
// Accumulators live in shared memory (fp32), since a fragment's lane layout is unspecified.
#include <cmath>

#include "core/cuda/attention_internal.h"
#include "core/cuda/launch.h"
#include "core/cuda/wmma.h"

namespace moe::cuda::attention_detail {
namespace {

namespace wmma = nvcuda::wmma;

constexpr int kThreads = 128, kTile = 64, kKvRows = 32;  // keys or rows per block; rows per dK/dV step

using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, dbf16, wmma::row_major>;
using FragBCol = wmma::fragment<wmma::matrix_b, 16, 16, 16, dbf16, wmma::col_major>;
using FragBRow = wmma::fragment<wmma::matrix_b, 16, 16, 16, dbf16, wmma::row_major>;
using FragC = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

size_t align128(size_t b) { return (b + 127) / 128 * 128; }

// Byte offsets of the shared arrays: bf16 tiles have rows of dp + 8, fp32 score tiles rows of
// n + 4, bf16 score tiles rows of n + 8, fp32 accumulators rows of dp + 4 (all keep fragments
// 32-byte aligned). `wide` = the big operand tile's rows (keys or rows), `narrow` = the other.
struct BwdLayout {
  int ldh, lds, ldb, ldo;
  size_t wide1, wide2, narrow1, narrow2, s, dp, p, ds, acc, lse, delta, bytes;
  BwdLayout(int dpad, int wide_rows, int narrow_rows, int score_rows, int score_cols, int accumulators)
      : ldh(dpad + 8), lds(score_cols + 4), ldb(score_cols + 8), ldo(dpad + 4) {
    wide1 = 0;
    wide2 = align128(wide1 + size_t(wide_rows) * ldh * 2);
    narrow1 = align128(wide2 + size_t(wide_rows) * ldh * 2);
    narrow2 = align128(narrow1 + size_t(narrow_rows) * ldh * 2);
    s = align128(narrow2 + size_t(narrow_rows) * ldh * 2);
    dp = align128(s + size_t(score_rows) * lds * 4);
    p = align128(dp + size_t(score_rows) * lds * 4);
    ds = align128(p + size_t(score_rows) * ldb * 2);
    acc = align128(ds + size_t(score_rows) * ldb * 2);
    lse = align128(acc + size_t(wide_rows) * ldo * 4 * accumulators);
    delta = lse + 4 * 64;
    bytes = delta + 4 * 64;
  }
};
BwdLayout kv_layout(int dpad) { return BwdLayout(dpad, kTile, kKvRows, kTile, kKvRows, 2); }  // dK, dV
BwdLayout q_layout(int dpad) { return BwdLayout(dpad, kTile, kTile, kTile, kTile, 1); }       // dQ

struct Ptrs {
  dbf16 *wide1, *wide2, *narrow1, *narrow2, *p, *ds;
  float *s, *dp, *acc, *lse, *delta;
};
__device__ Ptrs carve(unsigned char* smem, const BwdLayout& L) {
  return Ptrs{reinterpret_cast<dbf16*>(smem + L.wide1),   reinterpret_cast<dbf16*>(smem + L.wide2),
              reinterpret_cast<dbf16*>(smem + L.narrow1), reinterpret_cast<dbf16*>(smem + L.narrow2),
              reinterpret_cast<dbf16*>(smem + L.p),       reinterpret_cast<dbf16*>(smem + L.ds),
              reinterpret_cast<float*>(smem + L.s),       reinterpret_cast<float*>(smem + L.dp),
              reinterpret_cast<float*>(smem + L.acc),     reinterpret_cast<float*>(smem + L.lse),
              reinterpret_cast<float*>(smem + L.delta)};
}

// out[16 x 16n] = a[16 x dp] b^T for b stored row-major [16n][dp] (a col_major matrix_b), into an
// fp32 tile with row stride ldo.
__device__ void rows_times_rows_t(const dbf16* a, const dbf16* b, int ldh, int dp, int n, float* out, int ldo) {
  for (int j = 0; j < n; ++j) {
    FragC acc;
    wmma::fill_fragment(acc, 0.0f);
    for (int d0 = 0; d0 < dp; d0 += 16) {
      FragA fa;
      FragBCol fb;
      wmma::load_matrix_sync(fa, a + d0, ldh);
      wmma::load_matrix_sync(fb, b + 16 * j * ldh + d0, ldh);
      wmma::mma_sync(acc, fa, fb, acc);
    }
    wmma::store_matrix_sync(out + 16 * j, acc, ldo, wmma::mem_row_major);
  }
}

// acc[16 x dp] (fp32, row stride ldo) += a[16 x kdim] (bf16, row stride lda) b[kdim x dp] (bf16
// row-major, row stride ldh).
__device__ void accumulate_product(float* acc, int ldo, const dbf16* a, int lda, const dbf16* b, int ldh, int kdim,
                                   int dp) {
  for (int n0 = 0; n0 < dp; n0 += 16) {
    FragC c;
    wmma::load_matrix_sync(c, acc + n0, ldo, wmma::mem_row_major);
    for (int k0 = 0; k0 < kdim; k0 += 16) {
      FragA fa;
      FragBRow fb;
      wmma::load_matrix_sync(fa, a + k0, lda);
      wmma::load_matrix_sync(fb, b + k0 * ldh + n0, ldh);
      wmma::mma_sync(c, fa, fb, c);
    }
    wmma::store_matrix_sync(acc + n0, c, ldo, wmma::mem_row_major);
  }
}

__device__ void load_row_stats(const float* lse, const float* delta, long row_base, long r0, long rows, int n,
                               float* s_lse, float* s_delta) {
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    s_lse[i] = i < rows ? lse[row_base + r0 + i] : 0.0f;
    s_delta[i] = i < rows ? delta[row_base + r0 + i] : 0.0f;
  }
}

// One block per key tile: the warp's 16 keys; S^T = K Q^T and dP^T = V dO^T per 32-row step.
__global__ void __launch_bounds__(kThreads)
    dkdv_tc_kernel(const dbf16* q, const dbf16* k, const dbf16* v, const dbf16* dout, const float* lse,
                   const float* delta, dbf16* dk, dbf16* dv, HeadStrides hs, long S, int D, int dpad, float scale,
                   BwdLayout L) {
  MOE_DYNAMIC_SHARED(unsigned char, smem);
  const Ptrs t = carve(smem, L);
  dbf16 *sK = t.wide1, *sV = t.wide2, *sQ = t.narrow1, *sdO = t.narrow2;
  float *sdK = t.acc, *sdV = t.acc + kTile * L.ldo;
  const long head = blockIdx.y, c0 = long(blockIdx.x) * kTile, cols = S - c0 < kTile ? S - c0 : kTile;
  const long base = hs.base(head, S, D), rs = hs.row, row_base = head * S;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, kw = warp * 16;
  load_rows(k + base, rs, c0, cols, kTile, D, dpad, sK, L.ldh);
  load_rows(v + base, rs, c0, cols, kTile, D, dpad, sV, L.ldh);
  for (int i = threadIdx.x; i < 2 * kTile * L.ldo; i += kThreads) sdK[i] = 0.0f;  // sdK and sdV
  for (long r0 = c0; r0 < S; r0 += kKvRows) {  // rows before c0 see none of these keys
    const long rows = S - r0 < kKvRows ? S - r0 : kKvRows;
    __syncthreads();
    load_rows(q + base, rs, r0, rows, kKvRows, D, dpad, sQ, L.ldh);
    load_rows(dout + base, rs, r0, rows, kKvRows, D, dpad, sdO, L.ldh);
    load_row_stats(lse, delta, row_base, r0, rows, kKvRows, t.lse, t.delta);
    __syncthreads();
    rows_times_rows_t(sK + kw * L.ldh, sQ, L.ldh, dpad, kKvRows / 16, t.s + kw * L.lds, L.lds);
    rows_times_rows_t(sV + kw * L.ldh, sdO, L.ldh, dpad, kKvRows / 16, t.dp + kw * L.lds, L.lds);
    __syncwarp();
    for (int e = lane; e < 16 * kKvRows; e += 32) {
      const int key = kw + e / kKvRows, row = e % kKvRows;
      float p = 0.0f, ds = 0.0f;
      if (key < cols && row < rows && c0 + key <= r0 + row) {
        p = expf(scale * t.s[key * L.lds + row] - t.lse[row]);
        ds = p * (t.dp[key * L.lds + row] - t.delta[row]);
      }
      t.p[key * L.ldb + row] = from_float<dbf16>(p);
      t.ds[key * L.ldb + row] = from_float<dbf16>(ds);
    }
    __syncwarp();
    accumulate_product(sdV + kw * L.ldo, L.ldo, t.p + kw * L.ldb, L.ldb, sdO, L.ldh, kKvRows, dpad);  // P^T dO
    accumulate_product(sdK + kw * L.ldo, L.ldo, t.ds + kw * L.ldb, L.ldb, sQ, L.ldh, kKvRows, dpad);  // dS^T Q
  }
  __syncthreads();
  for (int i = threadIdx.x; i < kTile * D; i += kThreads) {
    const int key = i / D, d = i % D;
    if (key < cols) {
      const long at = base + (c0 + key) * rs + d;
      dk[at] = from_float<dbf16>(scale * sdK[key * L.ldo + d]);
      dv[at] = from_float<dbf16>(sdV[key * L.ldo + d]);
    }
  }
}

// One block per 64-row tile: the warp's 16 rows; S = Q K^T, dP = dO V^T per 64-key step.
__global__ void __launch_bounds__(kThreads)
    dq_tc_kernel(const dbf16* q, const dbf16* k, const dbf16* v, const dbf16* dout, const float* lse,
                 const float* delta, dbf16* dq, HeadStrides hs, long S, int D, int dpad, float scale, BwdLayout L) {
  MOE_DYNAMIC_SHARED(unsigned char, smem);
  const Ptrs t = carve(smem, L);
  dbf16 *sQ = t.wide1, *sdO = t.wide2, *sK = t.narrow1, *sV = t.narrow2;
  float* sdQ = t.acc;
  const long head = blockIdx.y, r0 = long(blockIdx.x) * kTile, rows = S - r0 < kTile ? S - r0 : kTile;
  const long base = hs.base(head, S, D), rs = hs.row, row_base = head * S;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, rw = warp * 16;
  load_rows(q + base, rs, r0, rows, kTile, D, dpad, sQ, L.ldh);
  load_rows(dout + base, rs, r0, rows, kTile, D, dpad, sdO, L.ldh);
  load_row_stats(lse, delta, row_base, r0, rows, kTile, t.lse, t.delta);
  for (int i = threadIdx.x; i < kTile * L.ldo; i += kThreads) sdQ[i] = 0.0f;
  for (long c0 = 0; c0 < r0 + rows; c0 += kTile) {
    const long cols = S - c0 < kTile ? S - c0 : kTile;
    __syncthreads();
    load_rows(k + base, rs, c0, cols, kTile, D, dpad, sK, L.ldh);
    load_rows(v + base, rs, c0, cols, kTile, D, dpad, sV, L.ldh);
    __syncthreads();
    rows_times_rows_t(sQ + rw * L.ldh, sK, L.ldh, dpad, kTile / 16, t.s + rw * L.lds, L.lds);
    rows_times_rows_t(sdO + rw * L.ldh, sV, L.ldh, dpad, kTile / 16, t.dp + rw * L.lds, L.lds);
    __syncwarp();
    for (int e = lane; e < 16 * kTile; e += 32) {
      const int row = rw + e / kTile, key = e % kTile;
      float ds = 0.0f;
      if (row < rows && key < cols && c0 + key <= r0 + row) {
        const float p = expf(scale * t.s[row * L.lds + key] - t.lse[row]);
        ds = p * (t.dp[row * L.lds + key] - t.delta[row]);
      }
      t.ds[row * L.ldb + key] = from_float<dbf16>(ds);
    }
    __syncwarp();
    accumulate_product(sdQ + rw * L.ldo, L.ldo, t.ds + rw * L.ldb, L.ldb, sK, L.ldh, kTile, dpad);  // dS K
  }
  __syncthreads();
  for (int i = threadIdx.x; i < kTile * D; i += kThreads) {
    const int row = i / D, d = i % D;
    if (row < rows) dq[base + (r0 + row) * rs + d] = from_float<dbf16>(scale * sdQ[row * L.ldo + d]);
  }
}

template <class Kernel>
void allow_shared(Kernel kernel, size_t bytes) {
#ifndef MOE_CUDA_EMULATION
  // Above 48 KiB of dynamic shared memory a kernel must opt in (sm_80: up to 163 KiB).
  const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
  MOE_CHECK(err == cudaSuccess, "cuda::flash_attention_backward", "cudaFuncSetAttribute(", bytes,
            " bytes of shared memory): ", cudaGetErrorString(err));
#else
  (void)kernel, (void)bytes;
#endif
}

}  // namespace

void flash_backward_tensor_cores(const bf16* q, const bf16* k, const bf16* v, const bf16* dout, const float* lse,
                                 const float* delta, bf16* dq, bf16* dk, bf16* dv, long batch_heads, long seq,
                                 int head_dim, HeadStrides hs, cudaStream_t stream) {
  const int dpad = (head_dim + 15) / 16 * 16;
  const float scale = float(1.0 / std::sqrt(double(head_dim)));
  const BwdLayout kv = kv_layout(dpad), ql = q_layout(dpad);
  allow_shared(dkdv_tc_kernel, kv_layout(kFlashMaxHeadDim).bytes);
  allow_shared(dq_tc_kernel, q_layout(kFlashMaxHeadDim).bytes);
  MOE_LAUNCH(dkdv_tc_kernel, dim3(ceil_div(seq, kTile), unsigned(batch_heads)), kThreads, kv.bytes, stream, dev(q),
             dev(k), dev(v), dev(dout), lse, delta, dev(dk), dev(dv), hs, seq, head_dim, dpad, scale, kv);
  MOE_LAUNCH(dq_tc_kernel, dim3(ceil_div(seq, kTile), unsigned(batch_heads)), kThreads, ql.bytes, stream, dev(q),
             dev(k), dev(v), dev(dout), lse, delta, dev(dq), hs, seq, head_dim, dpad, scale, ql);
}

}  // namespace moe::cuda::attention_detail
