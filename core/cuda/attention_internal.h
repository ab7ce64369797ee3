// Internal to the attention kernel sources (attention*.cu): where a head's rows live in memory,
// and the tensor-core forward and backward that attention.cu dispatches bf16 to.
#pragma once
#include "core/cuda/async_copy.h"
#include "core/cuda/attention.h"
#include "core/cuda/kernel.h"
#include "core/cuda/mma.h"
#include "core/error.h"

#include <cstdint>
#include <initializer_list>

namespace moe::cuda::attention_detail {

// [B, H, S, Dh] (rows D apart, heads S * D apart) or [B, S, H, Dh] (rows H * D apart, heads D
// apart); a batch always spans S * H * D elements.
struct HeadStrides {
  long heads, head, row;
  __device__ long base(long head_index, long S, int D) const {
    return head_index / heads * S * heads * D + head_index % heads * head;
  }
};

inline HeadStrides strides_of(AttentionLayout layout, long heads, long seq, int D) {
  return layout == AttentionLayout::kBHSD ? HeadStrides{heads, seq * D, D} : HeadStrides{heads, D, heads * D};
}

// rows x dp bf16 of a head from row r0 into dst (row stride ld, a multiple of 8), zero past
// `valid` rows or D. Each thread moves 8-element (16-byte) chunks; with `vec` (D % 8 == 0 and
// src 16-byte aligned, so every row start is) a full chunk is one vector copy.
__device__ inline void load_rows(const dbf16* src, long rs, long r0, long valid, int rows, int D, int dp, dbf16* dst,
                                 int ld, bool vec = false) {
  const dbf16 zero = from_float<dbf16>(0.0f);
  const int chunks = dp / 8;
  for (int i = threadIdx.x; i < rows * chunks; i += blockDim.x) {
    const int r = i / chunks, d0 = i % chunks * 8;
    dbf16* out = dst + r * ld + d0;
    const dbf16* in = src + (r0 + r) * rs + d0;
    if (vec && r < valid && d0 + 8 <= D) {
      copy16(out, in);
    } else {
      for (int j = 0; j < 8; ++j) out[j] = r < valid && d0 + j < D ? in[j] : zero;
    }
  }
}

// load_rows through cp.async (core/cuda/async_copy.h), for tiles double-buffered when
// flash_async_tiles() (attention.h): with `vec` every 16-byte chunk is one copy, zero-filled past `valid` rows or
// D (D % 8 == 0, so no chunk straddles D; a zero-filled copy reads nothing, src only has to be a
// 16-byte aligned address), landing at the caller's cp_async_wait; without `vec`, load_rows's
// plain loads and stores (visible after the next __syncthreads, not overlapped with anything).
__device__ inline void load_rows_async(const dbf16* src, long rs, long r0, long valid, int rows, int D, int dp,
                                       dbf16* dst, int ld, bool vec) {
  if (!vec) {
    load_rows(src, rs, r0, valid, rows, D, dp, dst, ld, false);
    return;
  }
  const int chunks = dp / 8;
  for (int i = threadIdx.x; i < rows * chunks; i += blockDim.x) {
    const int r = i / chunks, d0 = i % chunks * 8;
    const bool in = r < valid && d0 < D;
    cp_async16(dst + r * ld + d0, in ? src + (r0 + r) * rs + d0 : src, in);
  }
}

// n rows from r0 (zero past S) of two tensors of a head, a into dst and b into dst + n ld, through
// load_rows_async as one cp.async group.
__device__ inline void load_pair_async(const dbf16* a, const dbf16* b, long rs, long r0, long S, int n, int D, int dp,
                                       dbf16* dst, int ld, bool vec) {
  const long valid = S - r0 < n ? S - r0 : n;
  load_rows_async(a, rs, r0, valid, n, D, dp, dst, ld, vec);
  load_rows_async(b, rs, r0, valid, n, D, dp, dst + n * ld, ld, vec);
  cp_async_commit();
}

// The K / V tile of `keys` rows from c0 (zero past S) ready in shared memory for every warp at
// sK, sV, as the forward and dQ stream them over c0 < end. Synchronous (sK = kv, sV = kv + keys
// ld): a barrier (every warp is done with the previous tile), the loads, a barrier. Async: buffer
// b = c0 / keys % 2 at kv + 2 b keys ld, issued by the previous call (or the kernel's prologue:
// load_pair_async into buffer 0); this thread's wait for it, a barrier (every thread's copies have
// landed, and every warp is done with buffer 1 - b), then tile c0 + keys issued into buffer 1 - b,
// in flight while the warps compute on b.
template <bool kAsync>
__device__ __forceinline__ void next_kv_tile(const dbf16* k, const dbf16* v, long rs, long S, long c0, long end,
                                             int keys, int D, int dp, dbf16* kv, int ld, bool vec, dbf16*& sK,
                                             dbf16*& sV) {
  if constexpr (kAsync) {
    const int b = int(c0 / keys) & 1;
    sK = kv + 2 * b * keys * ld;
    sV = sK + keys * ld;
    cp_async_wait<0>();
    __syncthreads();
    if (c0 + keys < end) load_pair_async(k, v, rs, c0 + keys, S, keys, D, dp, kv + 2 * (1 - b) * keys * ld, ld, vec);
  } else {
    const long cols = S - c0 < keys ? S - c0 : keys;
    __syncthreads();
    load_rows(k, rs, c0, cols, keys, D, dp, sK, ld, vec);
    load_rows(v, rs, c0, cols, keys, D, dp, sV, ld, vec);
    __syncthreads();
  }
}

// ---- warp tiles on mma.sync (core/cuda/mma.h), shared by the bf16 forward and backward ----
// A warp owns 16 rows; scores are 16 x 8 n-tiles of fp32 accumulators (rows g and g + 8 of lane
// g * 4 + t hold columns 2t, 2t + 1), every tile in shared memory is bf16 with rows ld apart.
constexpr unsigned kFullWarp = 0xffffffffu;

// Each lane's row address in a 16 x 16 block for ldmatrix.x4: "a" as an A operand or a B operand
// read transposed (the 4 matrices: rows 0-7 / 8-15 by columns 0-7 / 8-15), "b" as a B operand
// stored by its n index (rows 0-7 / 8-15 are two n-tiles, columns 0-7 / 8-15 the two k halves).
__device__ __forceinline__ int lm_a_row(int lane) { return (lane & 7) + ((lane >> 3) & 1) * 8; }
__device__ __forceinline__ int lm_a_col(int lane) { return (lane >> 4) * 8; }
__device__ __forceinline__ int lm_b_row(int lane) { return (lane & 7) + (lane >> 4) * 8; }
__device__ __forceinline__ int lm_b_col(int lane) { return ((lane >> 3) & 1) * 8; }

// A row-tile block (the forward, dQ): `tile` rows from r0, the last tiles (which see the most
// keys) first; the warp's warp_rows (a multiple of 16) rows from `first`, in groups of 16 whose
// lane rows are row(m, 0) = first + 16 m + g and row(m, 1) = row(m, 0) + 8 (lo, hi: group 0).
struct RowTile {
  long r0, rows, first, lo, hi, last;  // last < first: the warp has no rows
  __device__ RowTile(long S, int tile, int warp_rows, int warp, int lane)
      : r0(long(gridDim.x - 1 - blockIdx.x) * tile),
        rows(S - r0 < tile ? S - r0 : tile),
        first(r0 + warp * warp_rows),
        lo(first + (lane >> 2)),
        hi(lo + 8),
        last(first + warp_rows - 1 < S - 1 ? first + warp_rows - 1 : S - 1) {}
  __device__ long row(int m, int h) const { return lo + 16 * m + 8 * h; }
  // Of a key tile from c0 (keys <= last, else the warp skips it): the 16-key blocks that reach a
  // row of the warp (the rest are masked).
  __device__ int key_blocks(long c0, int keys) const {
    return last - c0 >= keys - 16 ? keys / 16 : int(last - c0) / 16 + 1;
  }
};

// The A fragment of k-step ks (columns 16 ks..16 ks + 15) of the 16 rows at `rows`.
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const dbf16* rows, int ld, int ks, int lane) {
  mma::ldmatrix_x4(a, rows + lm_a_row(lane) * ld + ks * 16 + lm_a_col(lane));
}

// s[m] += A_m B^T over k-step ks for the warp's kM groups of 16 rows, for the n-tile pairs
// np < pairs (tiles 2 np, 2 np + 1 = rows 16 np..16 np + 15 of b, a row-major [n][k] tile); each
// B fragment is loaded once for all groups.
template <int kM, int kTiles>
__device__ __forceinline__ void mma_rows_t(float (&s)[kM][kTiles][4], const uint32_t (&a)[kM][4], const dbf16* b,
                                           int ld, int ks, int pairs, int lane) {
  MOE_UNROLL
  for (int np = 0; np < kTiles / 2; ++np) {
    if (np >= pairs) break;
    uint32_t r[4];
    mma::ldmatrix_x4(r, b + (np * 16 + lm_b_row(lane)) * ld + ks * 16 + lm_b_col(lane));
    const uint32_t b0[2] = {r[0], r[1]}, b1[2] = {r[2], r[3]};
    MOE_UNROLL
    for (int m = 0; m < kM; ++m) {
      mma::mma_bf16_16816(s[m][2 * np], a[m], b0, s[m][2 * np]);
      mma::mma_bf16_16816(s[m][2 * np + 1], a[m], b1, s[m][2 * np + 1]);
    }
  }
}

// acc[m] += P_m B: P_m = the score accumulators p[m] rounded to bf16 (n-tiles 2 kk, 2 kk + 1 are
// key block kk, exactly an A fragment's layout), for key blocks kk < kblocks; b row-major
// [key][d], d over nks k-steps of 16 (read transposed by ldmatrix, once for all groups).
template <int kM, int kSTiles, int kOTiles>
__device__ __forceinline__ void mma_scores_rows(float (&acc)[kM][kOTiles][4], const float (&p)[kM][kSTiles][4],
                                                const dbf16* b, int ld, int nks, int kblocks, int lane) {
  MOE_UNROLL
  for (int kk = 0; kk < kSTiles / 2; ++kk) {
    if (kk >= kblocks) break;
    uint32_t pa[kM][4];
    MOE_UNROLL
    for (int m = 0; m < kM; ++m) {
      pa[m][0] = mma::pack_bf16x2(p[m][2 * kk][0], p[m][2 * kk][1]);
      pa[m][1] = mma::pack_bf16x2(p[m][2 * kk][2], p[m][2 * kk][3]);
      pa[m][2] = mma::pack_bf16x2(p[m][2 * kk + 1][0], p[m][2 * kk + 1][1]);
      pa[m][3] = mma::pack_bf16x2(p[m][2 * kk + 1][2], p[m][2 * kk + 1][3]);
    }
    MOE_UNROLL
    for (int np = 0; np < kOTiles / 2; ++np) {
      if (np >= nks) break;
      uint32_t r[4];
      mma::ldmatrix_x4_trans(r, b + (kk * 16 + lm_a_row(lane)) * ld + np * 16 + lm_a_col(lane));
      const uint32_t b0[2] = {r[0], r[1]}, b1[2] = {r[2], r[3]};
      MOE_UNROLL
      for (int m = 0; m < kM; ++m) {
        mma::mma_bf16_16816(acc[m][2 * np], pa[m], b0, acc[m][2 * np]);
        mma::mma_bf16_16816(acc[m][2 * np + 1], pa[m], b1, acc[m][2 * np + 1]);
      }
    }
  }
}

// One group of 16 rows (kM = 1), as the backward uses them.
template <int kTiles>
__device__ __forceinline__ void mma_rows_t(float (&s)[kTiles][4], const uint32_t (&a)[4], const dbf16* b, int ld,
                                           int ks, int pairs, int lane) {
  mma_rows_t(reinterpret_cast<float(&)[1][kTiles][4]>(s), reinterpret_cast<const uint32_t(&)[1][4]>(a), b, ld, ks,
             pairs, lane);
}
template <int kSTiles, int kOTiles>
__device__ __forceinline__ void mma_scores_rows(float (&acc)[kOTiles][4], const float (&p)[kSTiles][4], const dbf16* b,
                                                int ld, int nks, int kblocks, int lane) {
  mma_scores_rows(reinterpret_cast<float(&)[1][kOTiles][4]>(acc), reinterpret_cast<const float(&)[1][kSTiles][4]>(p),
                  b, ld, nks, kblocks, lane);
}

template <int kTiles>
__device__ __forceinline__ void zero(float (&x)[kTiles][4]) {
  MOE_UNROLL
  for (int n = 0; n < kTiles; ++n) x[n][0] = x[n][1] = x[n][2] = x[n][3] = 0.0f;
}

// Two outputs of one row, adjacent in memory (d even); one 32-bit store when both are in range
// and out + d is 4-byte aligned (an even D does not make it so: the caller's pointer may be a
// view at an odd element).
__device__ __forceinline__ void store_pair(dbf16* out, int d, int D, float x0, float x1) {
  if (d + 1 < D && reinterpret_cast<uintptr_t>(out + d) % 4 == 0) {
    store32(out + d, mma::pack_bf16x2(x0, x1));
    return;
  }
  if (d < D) out[d] = from_float<dbf16>(x0);
  if (d + 1 < D) out[d + 1] = from_float<dbf16>(x1);
}

// The 16 rows x dp accumulators of a warp (rows g, g + 8 of `rows` rows at out, stride rs) times
// `scale`, to bf16; rows at or past `valid` are not written.
template <int kOTiles>
__device__ __forceinline__ void store_rows(const float (&acc)[kOTiles][4], dbf16* out, long rs, long valid, int D,
                                           int dp, float scale, int lane) {
  const int g = lane >> 2, t = lane & 3;
  MOE_UNROLL
  for (int h = 0; h < 2; ++h) {
    if (g + 8 * h >= valid) continue;
    dbf16* row = out + (g + 8 * h) * rs;
    MOE_UNROLL
    for (int n = 0; n < kOTiles; ++n) {
      if (n * 8 >= dp) break;
      store_pair(row, n * 8 + 2 * t, D, acc[n][2 * h] * scale, acc[n][2 * h + 1] * scale);
    }
  }
}
// ---- end warp tiles ----

// Host side of the bf16 kernels: whether load_rows may use 16-byte vectors (D % 8 == 0 and every
// base pointer 16-byte aligned). Above 48 KiB of dynamic shared memory the kernels opt in through
// launch.h's allow_dynamic_shared.
inline bool vector_loads_ok(int head_dim, std::initializer_list<const void*> ptrs) {
  bool ok = head_dim % 8 == 0;
  for (const void* p : ptrs) ok = ok && reinterpret_cast<uintptr_t>(p) % 16 == 0;
  return ok;
}

// The bf16 forward on tensor cores (mma.sync, registers): same contract as flash_attention_forward.
// async_tiles (flash_async_tiles(), attention.h): the K / V tiles double-buffered through cp.async,
// the next tile's copies in flight while the warps compute on the current one; the same
// arithmetic in the same order, so the same bits.
void flash_forward_tensor_cores(const bf16* q, const bf16* k, const bf16* v, bf16* out, float* lse, long batch_heads,
                                long seq, int head_dim, HeadStrides hs, bool async_tiles, cudaStream_t stream);

// The bf16 backward on tensor cores (mma.sync, registers; deterministic): dq, dk, dv from the forward's lse and delta = rowsum(dO O)
// [batch_heads, seq] (fp32), as flash_attention_backward. async_tiles: the streamed tiles (dQ's K / V,
// dK / dV's Q / dO) double-buffered through cp.async, as the forward's; the same bits.
void flash_backward_tensor_cores(const bf16* q, const bf16* k, const bf16* v, const bf16* dout, const float* lse,
                                 const float* delta, bf16* dq, bf16* dk, bf16* dv, long batch_heads, long seq,
                                 int head_dim, HeadStrides hs, bool async_tiles, cudaStream_t stream);

}  // namespace moe::cuda::attention_detail
