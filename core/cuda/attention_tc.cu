// The bf16 flash-attention forward on tensor cores, FlashAttention-2 style: a block of 4 warps
// takes 64 kM query rows, each warp kM groups of 16, against 64-key tiles of K and V in shared
// memory. Everything per row stays in registers with the documented mma.sync layout
// (core/cuda/mma.h): the warp's Q fragments (loaded once), the scores S = Q K^T (m16n8k16, fp32
// accumulators), the online softmax on them (a row's max and sum over the 4 lanes that hold it, by
// __shfl_xor_sync), P converted in registers to A fragments (bf16), and the running output
// O += P V with its rescale. Each K / V fragment read from shared memory feeds kM = 2 row groups
// (32 rows per warp, 128 per block, as FlashAttention-2), halving the shared-memory reads per
// product against 16 rows per warp. Head dims up to kFlashMaxHeadDim, padded with zeros to a
// multiple of 16; compiled for padded dims up to 64 (Q fragments in registers) and up to 128 (Q
// re-read from shared memory per k-step, to stay within 255 registers without spills).
// kAsync (flash_async_tiles(): the default from sm_90): two K / V buffers filled by cp.async,
// FlashAttention-2's pipeline: at each tile one wait + barrier (the tile has landed for every
// thread, and every warp is done with the other buffer), then the next tile's copies are issued
// into the other buffer and fly while the warps compute. One barrier per tile instead of two, and
// the tensor cores no longer wait for each tile's global loads; the cost is 2 x 64 more rows of
// shared memory (54 KiB at Dh = 64, 102 KiB at 128: 2 blocks per H100 SM, as the registers allow
// anyway; 1 on an A100). Measured on an H100 (2026-11-27): the forward 1.7-1.9x the synchronous
// tiles' TFLOP/s (docs/benchmarks.md); an A100 is unmeasured, so sm_80 keeps the synchronous tiles.
#include <cmath>
#include <cstdint>

#include "core/cuda/attention_internal.h"
#include "core/cuda/launch.h"
#include "core/cuda/mma.h"

namespace moe::cuda::attention_detail {
namespace {

constexpr int kKeys = 64, kWarps = 4, kThreads = kWarps * 32;

// Q (64 kM rows), K and V tiles (two of each when async) of bf16 with rows of dp + 8 elements:
// 16-byte aligned rows for ldmatrix, and the 8-element skew puts the 8 rows one ldmatrix phase
// reads in 8 bank groups.
size_t forward_shared_bytes(int dp, int kM, bool async) {
  return size_t(kWarps * 16 * kM + (async ? 4 : 2) * kKeys) * size_t(dp + 8) * sizeof(dbf16);
}

// kMaxDp: the largest padded head dim this instance handles (64 or 128); dp (a multiple of 16,
// <= kMaxDp) is the actual one, so loops run to kMaxDp with a uniform early exit. kM: groups of
// 16 rows per warp. scale_log2 = log2(e) / sqrt(D): the softmax runs in base 2 (exp2f).
template <int kMaxDp, int kM, bool kAsync>
__global__ void __launch_bounds__(kThreads)
    flash_forward_mma_kernel(const dbf16* q, const dbf16* k, const dbf16* v, dbf16* o, float* lse, HeadStrides hs,
                             long S, int D, int dp, float scale_log2, bool vec) {
  constexpr int kRows = kWarps * 16 * kM, kKSteps = kMaxDp / 16, kOTiles = kMaxDp / 8, kSTiles = kKeys / 8;
  MOE_DYNAMIC_SHARED(dbf16, smem);
  const int ld = dp + 8, nks = dp / 16;
  // sK, sV: the K / V tile being used, buffer 0 and then as next_kv_tile sets them (async: two
  // buffers). The synchronous instance's code is as before the async one: the same registers.
  dbf16* sQ = smem;
  dbf16* sK = sQ + kRows * ld;
  dbf16* sV = sK + kKeys * ld;
  const long head = blockIdx.y, base = hs.base(head, S, D), rs = hs.row;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, t = lane & 3;
  const RowTile w(S, kRows, 16 * kM, warp, lane);
  const long r0 = w.r0, rows = w.rows;
  if constexpr (kAsync) {
    load_rows_async(q + base, rs, r0, rows, kRows, D, dp, sQ, ld, vec);
    cp_async_commit();
    load_pair_async(k + base, v + base, rs, 0, S, kKeys, D, dp, sK, ld, vec);
    cp_async_wait<1>();  // Q (K / V tile 0 may still fly)
  } else {
    load_rows(q + base, rs, r0, rows, kRows, D, dp, sQ, ld, vec);
  }
  __syncthreads();
  // Q's A fragments: kept in registers when they are few (kM * dp <= 128), else re-read from
  // shared memory at each k-step (as FlashAttention-2 does by default).
  constexpr bool kQInRegisters = kM * kMaxDp <= 128;
  const dbf16* q_rows = sQ + warp * kM * 16 * ld;
  uint32_t qa[kQInRegisters ? kKSteps : 1][kM][4];
  MOE_UNROLL
  for (int ks = 0; ks < (kQInRegisters ? kKSteps : 0); ++ks)
    MOE_UNROLL
  for (int m = 0; m < kM; ++m)
    if (ks < nks) load_a(qa[ks][m], q_rows + m * 16 * ld, ld, ks, lane);

  float acc[kM][kOTiles][4];
  MOE_UNROLL
  for (int m = 0; m < kM; ++m) zero(acc[m]);
  float m_run[kM][2], l_run[kM][2];  // rows g and g + 8 of each group; l per lane
  MOE_UNROLL
  for (int m = 0; m < kM; ++m) m_run[m][0] = m_run[m][1] = -INFINITY, l_run[m][0] = l_run[m][1] = 0.0f;

  for (long c0 = 0; c0 < r0 + rows; c0 += kKeys) {
    next_kv_tile<kAsync>(k + base, v + base, rs, S, c0, r0 + rows, kKeys, D, dp, sQ + kRows * ld, ld, vec, sK, sV);
    if (c0 > w.last) continue;  // above the diagonal for all the warp's rows (warp-uniform)

    // S = Q K^T for 16 kM rows x 64 keys; key blocks past the warp's last row stay 0 (masked
    // below, and P V skips them).
    const int blocks = w.key_blocks(c0, kKeys);
    float s[kM][kSTiles][4];
    MOE_UNROLL
    for (int m = 0; m < kM; ++m) zero(s[m]);
    MOE_UNROLL
    for (int ks = 0; ks < kKSteps; ++ks) {
      if (ks >= nks) break;
      if constexpr (kQInRegisters) {
        mma_rows_t(s, qa[ks], sK, ld, ks, blocks, lane);
      } else {
        MOE_UNROLL
        for (int m = 0; m < kM; ++m) load_a(qa[0][m], q_rows + m * 16 * ld, ld, ks, lane);
        mma_rows_t(s, qa[0], sK, ld, ks, blocks, lane);
      }
    }
    // Causal mask where the tile reaches past a row of the warp; keys past S (zero rows of K) are
    // past every valid row, so the same test masks them.
    if (c0 + kKeys - 1 > w.first) {
      MOE_UNROLL
      for (int m = 0; m < kM; ++m)
        MOE_UNROLL
      for (int n = 0; n < kSTiles; ++n)
        MOE_UNROLL
      for (int e = 0; e < 4; ++e)
        if (c0 + n * 8 + 2 * t + (e & 1) > w.row(m, e >> 1)) s[m][n][e] = -INFINITY;
    }

    // Online softmax per row (h = 0: row g, registers 0-1; h = 1: row g + 8, registers 2-3).
    MOE_UNROLL
    for (int m = 0; m < kM; ++m)
      MOE_UNROLL
    for (int h = 0; h < 2; ++h) {
      float mx = -INFINITY;
      MOE_UNROLL
      for (int n = 0; n < kSTiles; ++n) mx = fmaxf(mx, fmaxf(s[m][n][2 * h], s[m][n][2 * h + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(kFullWarp, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(kFullWarp, mx, 2));
      const float m_new = fmaxf(m_run[m][h], mx * scale_log2);
      const float m_base = m_new == -INFINITY ? 0.0f : m_new;  // a row with nothing unmasked yet
      const float alpha = exp2f(m_run[m][h] - m_base);         // 0 on the first tile
      m_run[m][h] = m_new;
      float sum = 0.0f;
      MOE_UNROLL
      for (int n = 0; n < kSTiles; ++n)
        MOE_UNROLL
      for (int j = 0; j < 2; ++j) {
        const float p = exp2f(fmaf(s[m][n][2 * h + j], scale_log2, -m_base));
        s[m][n][2 * h + j] = p;
        sum += p;  // fp32 P in the sum, bf16 P in the product (as FlashAttention-2)
      }
      l_run[m][h] = l_run[m][h] * alpha + sum;
      MOE_UNROLL
      for (int n = 0; n < kOTiles; ++n) acc[m][n][2 * h] *= alpha, acc[m][n][2 * h + 1] *= alpha;
    }

    mma_scores_rows(acc, s, sV, ld, nks, blocks, lane);  // O += P V
  }

  // Each lane summed its own columns of the row: add the row's 4 lanes, then normalize and store.
  MOE_UNROLL
  for (int m = 0; m < kM; ++m) {
    MOE_UNROLL
    for (int h = 0; h < 2; ++h) {
      l_run[m][h] += __shfl_xor_sync(kFullWarp, l_run[m][h], 1);
      l_run[m][h] += __shfl_xor_sync(kFullWarp, l_run[m][h], 2);
      const float inv = 1.0f / l_run[m][h];
      MOE_UNROLL
      for (int n = 0; n < kOTiles; ++n) acc[m][n][2 * h] *= inv, acc[m][n][2 * h + 1] *= inv;
      const long row = w.row(m, h);
      if (row < S && t == 0) lse[head * S + row] = m_run[m][h] * float(M_LN2) + logf(l_run[m][h]);
    }
    const long first = w.first + 16 * m;
    store_rows(acc[m], o + base + first * rs, rs, S - first, D, dp, 1.0f, lane);
  }
}

template <int kMaxDp, int kM, bool kAsync>
void launch_forward(const bf16* q, const bf16* k, const bf16* v, bf16* out, float* lse, long batch_heads, long seq,
                    int head_dim, int dp, HeadStrides hs, bool vec, cudaStream_t stream) {
  const size_t bytes = forward_shared_bytes(dp, kM, kAsync);
  allow_dynamic_shared("cuda::flash_attention_forward", flash_forward_mma_kernel<kMaxDp, kM, kAsync>, bytes);
  const float scale_log2 = float(M_LOG2E / std::sqrt(double(head_dim)));
  MOE_LAUNCH((flash_forward_mma_kernel<kMaxDp, kM, kAsync>),
             dim3(ceil_div(seq, kWarps * 16 * kM), unsigned(batch_heads)), kThreads, bytes, stream, dev(q), dev(k),
             dev(v), dev(out), lse, hs, seq, head_dim, dp, scale_log2, vec);
}

template <bool kAsync>
void launch_forward(const bf16* q, const bf16* k, const bf16* v, bf16* out, float* lse, long batch_heads, long seq,
                    int head_dim, HeadStrides hs, cudaStream_t stream) {
  const int dp = (head_dim + 15) / 16 * 16;
  const bool vec = vector_loads_ok(head_dim, {q, k, v});
  if (dp <= 64)
    launch_forward<64, 2, kAsync>(q, k, v, out, lse, batch_heads, seq, head_dim, dp, hs, vec, stream);
  else
    launch_forward<kFlashMaxHeadDim, 2, kAsync>(q, k, v, out, lse, batch_heads, seq, head_dim, dp, hs, vec, stream);
}

}  // namespace

void flash_forward_tensor_cores(const bf16* q, const bf16* k, const bf16* v, bf16* out, float* lse, long batch_heads,
                                long seq, int head_dim, HeadStrides hs, bool async_tiles, cudaStream_t stream) {
  if (async_tiles)
    launch_forward<true>(q, k, v, out, lse, batch_heads, seq, head_dim, hs, stream);
  else
    launch_forward<false>(q, k, v, out, lse, batch_heads, seq, head_dim, hs, stream);
}

}  // namespace moe::cuda::attention_detail
