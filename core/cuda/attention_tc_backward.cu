// The bf16 flash-attention backward on tensor cores, FlashAttention-2 style and deterministic like
// the fp32 one (no atomics): dK / dV by one block per 64-key tile (each warp owns 16 keys, query
// rows in steps of 32), dQ by one block per 64-row tile (each warp owns 16 rows, keys in steps of
// 64). The scores, P (recomputed from the saved logsumexp), dP, dS = P (dP - delta) and the dK,
// dV, dQ accumulators stay in registers with the mma.sync layout (core/cuda/mma.h); operand
// tiles come from shared memory by ldmatrix. P and dS are rounded to bf16 as product operands only.
// kAsync (flash_async_tiles(): the default from sm_90): the streamed tiles (dK / dV's 32-row steps
// of Q, dO, lse, delta; dQ's 64-key tiles of K, V) in two buffers, the next one's copies (cp.async;
// the step's lse and delta by plain stores) issued after the one wait + barrier per step and flying
// while the warps compute, as the forward (attention_tc.cu). Same arithmetic, same order: the same
// bits.
#include <cmath>
#include <cstdint>

#include "core/cuda/attention_internal.h"
#include "core/cuda/launch.h"

namespace moe::cuda::attention_detail {
namespace {

constexpr int kThreads = 128, kTile = 64, kKvRows = 32;  // keys or rows per block; rows per dK/dV step

// bf16 tiles with rows of dp + 8 (as the forward); dK/dV also keeps a step's lse and delta. Async:
// two of each streamed tile (at Dh = 128: dK/dV 52 KiB, dQ 102 KiB).
size_t dkdv_shared_bytes(int dp, bool async) {
  const int buffers = async ? 2 : 1;
  return size_t(2 * kTile + buffers * 2 * kKvRows) * size_t(dp + 8) * sizeof(dbf16) +
         size_t(buffers) * 2 * kKvRows * sizeof(float);
}
size_t dq_shared_bytes(int dp, bool async) {
  return size_t((async ? 6 : 4) * kTile) * size_t(dp + 8) * sizeof(dbf16);
}

// For one warp: s = A B^T and dpv = C E^T, A and C the warp's 16 rows (a, c), B and E row-major
// [n][d] tiles, n-tile pairs < pairs, d over nks k-steps.
template <int kTiles, int kKSteps>
__device__ void scores_and_dp(float (&s)[kTiles][4], float (&dpv)[kTiles][4], const dbf16* a, const dbf16* b,
                              const dbf16* c, const dbf16* e, int ld, int nks, int pairs, int lane) {
  zero(s);
  zero(dpv);
  MOE_UNROLL
  for (int ks = 0; ks < kKSteps; ++ks) {
    if (ks >= nks) break;
    uint32_t frag[4];
    load_a(frag, a, ld, ks, lane);
    mma_rows_t(s, frag, b, ld, ks, pairs, lane);
    load_a(frag, c, ld, ks, lane);
    mma_rows_t(dpv, frag, e, ld, ks, pairs, lane);
  }
}

// One block per key tile; the warp's 16 keys: S^T = K Q^T and dP^T = V dO^T per 32-row step, then
// dV += P^T dO and dK += dS^T Q. scale_log2 = log2(e) / sqrt(D); lse is kept in base-2 units.
template <int kMaxDp, bool kAsync>
__global__ void __launch_bounds__(kThreads)
    dkdv_mma_kernel(const dbf16* q, const dbf16* k, const dbf16* v, const dbf16* dout, const float* lse,
                    const float* delta, dbf16* dk, dbf16* dv, HeadStrides hs, long S, int D, int dp, float scale,
                    float scale_log2, bool vec) {
  constexpr int kKSteps = kMaxDp / 16, kOTiles = kMaxDp / 8, kSTiles = kKvRows / 8;
  MOE_DYNAMIC_SHARED(dbf16, smem);
  const int ld = dp + 8, nks = dp / 16;
  // The step's sQ, sdO, sLse, sDelta: buffer 0; async, buffer b (step (r0 - c0) / kKvRows % 2)
  // at 2 b kKvRows bf16 rows and 2 b kKvRows floats further. (The synchronous instance is written
  // as before the async one, to keep its code and registers.)
  dbf16* sK = smem;
  dbf16* sV = sK + kTile * ld;
  dbf16* sQ = sV + kTile * ld;
  dbf16* sdO = sQ + kKvRows * ld;
  float* sLse = reinterpret_cast<float*>(sdO + (kAsync ? 3 : 1) * kKvRows * ld);
  float* sDelta = sLse + kKvRows;
  float* const step_floats = sLse;  // async: buffer b's lse, delta at 2 b kKvRows
  // The first key tiles see the most rows; they have the lowest block indices, so they go first.
  const long head = blockIdx.y, c0 = long(blockIdx.x) * kTile, cols = S - c0 < kTile ? S - c0 : kTile;
  const long base = hs.base(head, S, D), rs = hs.row, row_base = head * S;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3;
  const long key0 = c0 + warp * 16, key_lo = key0 + g, key_hi = key_lo + 8;
  // Async: the step from row r0 into buffer b, Q and dO as one cp.async group, lse (base 2) and
  // delta by plain stores (visible after the barrier that precedes the step's use).
  auto issue_step = [&](long r0, int b) {
    const long rows = S - r0 < kKvRows ? S - r0 : kKvRows;
    load_pair_async(q + base, dout + base, rs, r0, S, kKvRows, D, dp, sV + (kTile + 2 * b * kKvRows) * ld, ld, vec);
    float* bLse = step_floats + 2 * b * kKvRows;
    for (int i = threadIdx.x; i < kKvRows; i += kThreads) {
      bLse[i] = i < rows ? lse[row_base + r0 + i] * float(M_LOG2E) : 0.0f;
      bLse[kKvRows + i] = i < rows ? delta[row_base + r0 + i] : 0.0f;
    }
  };
  if constexpr (kAsync) {
    load_rows_async(k + base, rs, c0, cols, kTile, D, dp, sK, ld, vec);
    load_rows_async(v + base, rs, c0, cols, kTile, D, dp, sV, ld, vec);
    issue_step(c0, 0);  // K and V join its group, waited for at the first step
  } else {
    load_rows(k + base, rs, c0, cols, kTile, D, dp, sK, ld, vec);
    load_rows(v + base, rs, c0, cols, kTile, D, dp, sV, ld, vec);
  }
  float dk_acc[kOTiles][4], dv_acc[kOTiles][4];
  zero(dk_acc);
  zero(dv_acc);
  for (long r0 = c0; r0 < S; r0 += kKvRows) {  // rows before c0 see none of these keys
    const long rows = S - r0 < kKvRows ? S - r0 : kKvRows;
    if constexpr (kAsync) {
      const int b = int((r0 - c0) / kKvRows) & 1;
      sQ = sV + (kTile + 2 * b * kKvRows) * ld;
      sdO = sQ + kKvRows * ld;
      sLse = step_floats + 2 * b * kKvRows;
      sDelta = sLse + kKvRows;
      cp_async_wait<0>();  // this thread's copies of the step
      __syncthreads();     // everyone's (and the lse / delta stores); every warp is done with buffer 1 - b
      if (r0 + kKvRows < S) issue_step(r0 + kKvRows, 1 - b);
    } else {
      __syncthreads();  // every warp is done with the previous step's tiles
      load_rows(q + base, rs, r0, rows, kKvRows, D, dp, sQ, ld, vec);
      load_rows(dout + base, rs, r0, rows, kKvRows, D, dp, sdO, ld, vec);
      for (int i = threadIdx.x; i < kKvRows; i += kThreads) {
        sLse[i] = i < rows ? lse[row_base + r0 + i] * float(M_LOG2E) : 0.0f;
        sDelta[i] = i < rows ? delta[row_base + r0 + i] : 0.0f;
      }
      __syncthreads();
    }
    if (r0 + kKvRows - 1 < key0) continue;  // every row of the step is before the warp's keys

    float st[kSTiles][4], dpt[kSTiles][4];
    scores_and_dp<kSTiles, kKSteps>(st, dpt, sK + warp * 16 * ld, sQ, sV + warp * 16 * ld, sdO, ld, nks,
                                    kKvRows / 16, lane);
    // (key, row) entries: P^T = exp2(S^T scale_log2 - lse2), dS^T = P^T (dP^T - delta), zero where
    // the row is past S or before the key (keys past S are past every row).
    MOE_UNROLL
    for (int n = 0; n < kSTiles; ++n)
      MOE_UNROLL
    for (int e = 0; e < 4; ++e) {
      const int r = n * 8 + 2 * t + (e & 1);
      float p = 0.0f, ds = 0.0f;
      if (r < rows && (e < 2 ? key_lo : key_hi) <= r0 + r) {
        p = exp2f(fmaf(st[n][e], scale_log2, -sLse[r]));
        ds = p * (dpt[n][e] - sDelta[r]);
      }
      st[n][e] = p;
      dpt[n][e] = ds;
    }
    mma_scores_rows(dv_acc, st, sdO, ld, nks, kKvRows / 16, lane);  // dV += P^T dO
    mma_scores_rows(dk_acc, dpt, sQ, ld, nks, kKvRows / 16, lane);  // dK += dS^T Q
  }
  store_rows(dk_acc, dk + base + key0 * rs, rs, S - key0, D, dp, scale, lane);
  store_rows(dv_acc, dv + base + key0 * rs, rs, S - key0, D, dp, 1.0f, lane);
}

// One block per 64-row tile; the warp's 16 rows: S = Q K^T and dP = dO V^T per 64-key step, then
// dQ += dS K.
template <int kMaxDp, bool kAsync>
__global__ void __launch_bounds__(kThreads)
    dq_mma_kernel(const dbf16* q, const dbf16* k, const dbf16* v, const dbf16* dout, const float* lse,
                  const float* delta, dbf16* dq, HeadStrides hs, long S, int D, int dp, float scale, float scale_log2,
                  bool vec) {
  constexpr int kKSteps = kMaxDp / 16, kOTiles = kMaxDp / 8, kSTiles = kTile / 8;
  MOE_DYNAMIC_SHARED(dbf16, smem);
  const int ld = dp + 8, nks = dp / 16;
  dbf16* sQ = smem;
  dbf16* sdO = sQ + kTile * ld;
  // sK, sV: the K / V tile being used, buffer 0 and then as next_kv_tile sets them (async: two
  // buffers). The synchronous instance's code is as before the async one: the same registers.
  dbf16* sK = sdO + kTile * ld;
  dbf16* sV = sK + kTile * ld;
  const long head = blockIdx.y, base = hs.base(head, S, D), rs = hs.row, row_base = head * S;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, t = lane & 3;
  const RowTile w(S, kTile, 16, warp, lane);
  const long r0 = w.r0, rows = w.rows;
  if constexpr (kAsync) {
    load_rows_async(q + base, rs, r0, rows, kTile, D, dp, sQ, ld, vec);
    load_rows_async(dout + base, rs, r0, rows, kTile, D, dp, sdO, ld, vec);
    load_pair_async(k + base, v + base, rs, 0, S, kTile, D, dp, sK, ld, vec);  // with Q and dO: one group
  } else {
    load_rows(q + base, rs, r0, rows, kTile, D, dp, sQ, ld, vec);
    load_rows(dout + base, rs, r0, rows, kTile, D, dp, sdO, ld, vec);
  }
  float lse2[2], dl[2];  // rows g and g + 8
  MOE_UNROLL
  for (int h = 0; h < 2; ++h) {
    const long row = h ? w.hi : w.lo;
    lse2[h] = row < S ? lse[row_base + row] * float(M_LOG2E) : 0.0f;
    dl[h] = row < S ? delta[row_base + row] : 0.0f;
  }
  float dq_acc[kOTiles][4];
  zero(dq_acc);
  for (long c0 = 0; c0 < r0 + rows; c0 += kTile) {
    next_kv_tile<kAsync>(k + base, v + base, rs, S, c0, r0 + rows, kTile, D, dp, sdO + kTile * ld, ld, vec, sK, sV);
    if (c0 > w.last) continue;  // above the diagonal for all the warp's rows (warp-uniform)

    const int blocks = w.key_blocks(c0, kTile);
    float s[kSTiles][4], dpv[kSTiles][4];
    scores_and_dp<kSTiles, kKSteps>(s, dpv, sQ + warp * 16 * ld, sK, sdO + warp * 16 * ld, sV, ld, nks, blocks,
                                    lane);
    MOE_UNROLL
    for (int n = 0; n < kSTiles; ++n)
      MOE_UNROLL
    for (int e = 0; e < 4; ++e) {
      const long row = e < 2 ? w.lo : w.hi;
      float ds = 0.0f;
      if (row < S && c0 + n * 8 + 2 * t + (e & 1) <= row) {
        const float p = exp2f(fmaf(s[n][e], scale_log2, -lse2[e >> 1]));
        ds = p * (dpv[n][e] - dl[e >> 1]);
      }
      s[n][e] = ds;
    }
    mma_scores_rows(dq_acc, s, sK, ld, nks, blocks, lane);  // dQ += dS K
  }
  store_rows(dq_acc, dq + base + w.first * rs, rs, S - w.first, D, dp, scale, lane);
}

template <int kMaxDp, bool kAsync>
void launch_backward(const bf16* q, const bf16* k, const bf16* v, const bf16* dout, const float* lse,
                     const float* delta, bf16* dq, bf16* dk, bf16* dv, long batch_heads, long seq, int head_dim,
                     int dp, HeadStrides hs, bool vec, cudaStream_t stream) {
  const size_t kv_bytes = dkdv_shared_bytes(dp, kAsync), q_bytes = dq_shared_bytes(dp, kAsync);
  allow_dynamic_shared("cuda::flash_attention_backward", dkdv_mma_kernel<kMaxDp, kAsync>, kv_bytes);
  allow_dynamic_shared("cuda::flash_attention_backward", dq_mma_kernel<kMaxDp, kAsync>, q_bytes);
  const float scale = float(1.0 / std::sqrt(double(head_dim))), scale_log2 = float(M_LOG2E) * scale;
  const dim3 grid(ceil_div(seq, kTile), unsigned(batch_heads));
  MOE_LAUNCH((dkdv_mma_kernel<kMaxDp, kAsync>), grid, kThreads, kv_bytes, stream, dev(q), dev(k), dev(v), dev(dout),
             lse, delta, dev(dk), dev(dv), hs, seq, head_dim, dp, scale, scale_log2, vec);
  MOE_LAUNCH((dq_mma_kernel<kMaxDp, kAsync>), grid, kThreads, q_bytes, stream, dev(q), dev(k), dev(v), dev(dout), lse,
             delta, dev(dq), hs, seq, head_dim, dp, scale, scale_log2, vec);
}

template <bool kAsync>
void launch_backward(const bf16* q, const bf16* k, const bf16* v, const bf16* dout, const float* lse,
                     const float* delta, bf16* dq, bf16* dk, bf16* dv, long batch_heads, long seq, int head_dim,
                     HeadStrides hs, cudaStream_t stream) {
  const int dp = (head_dim + 15) / 16 * 16;
  const bool vec = vector_loads_ok(head_dim, {q, k, v, dout});
  if (dp <= 64)
    launch_backward<64, kAsync>(q, k, v, dout, lse, delta, dq, dk, dv, batch_heads, seq, head_dim, dp, hs, vec,
                                stream);
  else
    launch_backward<kFlashMaxHeadDim, kAsync>(q, k, v, dout, lse, delta, dq, dk, dv, batch_heads, seq, head_dim, dp,
                                              hs, vec, stream);
}

}  // namespace

void flash_backward_tensor_cores(const bf16* q, const bf16* k, const bf16* v, const bf16* dout, const float* lse,
                                 const float* delta, bf16* dq, bf16* dk, bf16* dv, long batch_heads, long seq,
                                 int head_dim, HeadStrides hs, bool async_tiles, cudaStream_t stream) {
  if (async_tiles)
    launch_backward<true>(q, k, v, dout, lse, delta, dq, dk, dv, batch_heads, seq, head_dim, hs, stream);
  else
    launch_backward<false>(q, k, v, dout, lse, delta, dq, dk, dv, batch_heads, seq, head_dim, hs, stream);
}

}  // namespace moe::cuda::attention_detail
