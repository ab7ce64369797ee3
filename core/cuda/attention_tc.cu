// The bf16 flash-attention forward on tensor cores: per block 64 query rows (16 per warp) against
// 64-key tiles; S = Q K^T and O += P V are wmma products (bf16 operands, fp32 accumulation). The
// API leaves a fragment's lane layout unspecified, so the running output O lives in shared memory
// (fp32) and the online softmax rescales it there, one warp per its own 16 rows.
#include <cmath>

#include "core/cuda/attention_internal.h"
#include "core/cuda/launch.h"
#include "core/cuda/wmma.h"

namespace moe::cuda::attention_detail {
namespace {

namespace wmma = nvcuda::wmma;

constexpr int kRows = 64, kKeys = 64, kWarps = 4, kThreads = kWarps * 32, kWarpRows = kRows / kWarps;
constexpr int kMaxDp = kFlashMaxHeadDim;  // head dim padded to a multiple of 16

using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, dbf16, wmma::row_major>;
using FragBCol = wmma::fragment<wmma::matrix_b, 16, 16, 16, dbf16, wmma::col_major>;
using FragBRow = wmma::fragment<wmma::matrix_b, 16, 16, 16, dbf16, wmma::row_major>;
using FragC = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

// Shared memory layout for a padded head dim dp (a multiple of 16): bf16 tiles with rows of
// dp + 8 (16-byte multiples keep every fragment 32-byte aligned), fp32 tiles with rows of n + 4.
struct Layout {
  int ldh, lds, ldp, ldo;
  size_t q, k, v, s, p, o, m, l, bytes;
  __host__ __device__ explicit Layout(int dp) : ldh(dp + 8), lds(kKeys + 4), ldp(kKeys + 8), ldo(dp + 4) {
    auto up = [](size_t b) { return (b + 127) / 128 * 128; };
    q = 0;
    k = up(q + size_t(kRows) * ldh * 2);
    v = up(k + size_t(kKeys) * ldh * 2);
    s = up(v + size_t(kKeys) * ldh * 2);
    p = up(s + size_t(kRows) * lds * 4);
    o = up(p + size_t(kRows) * ldp * 2);
    m = up(o + size_t(kRows) * ldo * 4);
    l = m + kRows * 4;
    bytes = l + kRows * 4;
  }
};

__global__ void __launch_bounds__(kThreads)
    flash_forward_tc_kernel(const dbf16* q, const dbf16* k, const dbf16* v, dbf16* o, float* lse, HeadStrides hs,
                            long S, int D, int dp, float scale) {
  MOE_DYNAMIC_SHARED(unsigned char, smem);
  const Layout L(dp);
  dbf16* sQ = reinterpret_cast<dbf16*>(smem + L.q);
  dbf16* sK = reinterpret_cast<dbf16*>(smem + L.k);
  dbf16* sV = reinterpret_cast<dbf16*>(smem + L.v);
  float* sS = reinterpret_cast<float*>(smem + L.s);
  dbf16* sP = reinterpret_cast<dbf16*>(smem + L.p);
  float* sO = reinterpret_cast<float*>(smem + L.o);
  float* sM = reinterpret_cast<float*>(smem + L.m);
  float* sL = reinterpret_cast<float*>(smem + L.l);
  const long head = blockIdx.y, r0 = long(blockIdx.x) * kRows;
  const long rows = S - r0 < kRows ? S - r0 : kRows;
  const long base = hs.base(head, S, D), rs = hs.row;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, wr = warp * kWarpRows;

  load_rows(q + base, rs, r0, rows, kRows, D, dp, sQ, L.ldh);
  for (int i = threadIdx.x; i < kRows * dp; i += kThreads) sO[i / dp * L.ldo + i % dp] = 0.0f;
  if (threadIdx.x < kRows) sM[threadIdx.x] = -INFINITY, sL[threadIdx.x] = 0.0f;

  const long last_row = r0 + rows - 1;
  for (long c0 = 0; c0 <= last_row; c0 += kKeys) {
    const long cols = S - c0 < kKeys ? S - c0 : kKeys;
    __syncthreads();  // every warp is done with the previous K / V tile
    load_rows(k + base, rs, c0, cols, kKeys, D, dp, sK, L.ldh);
    load_rows(v + base, rs, c0, cols, kKeys, D, dp, sV, L.ldh);
    __syncthreads();

    // S_w = Q_w K^T for the warp's 16 rows: K row-major [key][d] is a col_major matrix_b.
    for (int j = 0; j < kKeys / 16; ++j) {
      FragC acc;
      wmma::fill_fragment(acc, 0.0f);
      for (int d0 = 0; d0 < dp; d0 += 16) {
        FragA a;
        FragBCol b;
        wmma::load_matrix_sync(a, sQ + wr * L.ldh + d0, L.ldh);
        wmma::load_matrix_sync(b, sK + (16 * j) * L.ldh + d0, L.ldh);
        wmma::mma_sync(acc, a, b, acc);
      }
      wmma::store_matrix_sync(sS + wr * L.lds + 16 * j, acc, L.lds, wmma::mem_row_major);
    }
    __syncwarp();

    // Online softmax: two lanes per row, each over half the keys, combined by one shuffle.
    const int r = wr + lane / 2, half = lane % 2;
    const long row = r0 + r;
    float mx = -INFINITY;
    for (int j = half * (kKeys / 2); j < (half + 1) * (kKeys / 2); ++j)
      if (r < rows && j < cols && c0 + j <= row) mx = fmaxf(mx, sS[r * L.lds + j] * scale);
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    const float m_old = sM[r], m_new = fmaxf(m_old, mx);
    float sum = 0.0f;
    for (int j = half * (kKeys / 2); j < (half + 1) * (kKeys / 2); ++j) {
      float p = 0.0f;
      if (m_new != -INFINITY && r < rows && j < cols && c0 + j <= row) p = expf(sS[r * L.lds + j] * scale - m_new);
      sP[r * L.ldp + j] = from_float<dbf16>(p);  // V is multiplied by bf16 P; the sum stays fp32 (as FA2)
      sum += p;
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    const float alpha = m_new == -INFINITY ? 1.0f : expf(m_old - m_new);
    for (int d = half; d < dp; d += 2) sO[r * L.ldo + d] *= alpha;
    __syncwarp();  // both lanes of the row have read sM before it changes
    if (half == 0) sM[r] = m_new, sL[r] = sL[r] * alpha + sum;
    __syncwarp();

    // O_w += P_w V: V row-major [key][d] is a row_major matrix_b.
    for (int n0 = 0; n0 < dp; n0 += 16) {
      FragC acc;
      wmma::load_matrix_sync(acc, sO + wr * L.ldo + n0, L.ldo, wmma::mem_row_major);
      for (int j0 = 0; j0 < kKeys; j0 += 16) {
        FragA a;
        FragBRow b;
        wmma::load_matrix_sync(a, sP + wr * L.ldp + j0, L.ldp);
        wmma::load_matrix_sync(b, sV + j0 * L.ldh + n0, L.ldh);
        wmma::mma_sync(acc, a, b, acc);
      }
      wmma::store_matrix_sync(sO + wr * L.ldo + n0, acc, L.ldo, wmma::mem_row_major);
    }
    __syncwarp();
  }
  __syncthreads();
  for (int i = threadIdx.x; i < kRows * D; i += kThreads) {
    const int r = i / D, d = i % D;
    if (r < rows) o[base + (r0 + r) * rs + d] = from_float<dbf16>(sO[r * L.ldo + d] / sL[r]);
  }
  if (threadIdx.x < rows) lse[head * S + r0 + threadIdx.x] = sM[threadIdx.x] + logf(sL[threadIdx.x]);
}

}  // namespace

void flash_forward_tensor_cores(const bf16* q, const bf16* k, const bf16* v, bf16* out, float* lse, long batch_heads,
                                long seq, int head_dim, HeadStrides hs, cudaStream_t stream) {
  const int dp = (head_dim + 15) / 16 * 16;
  const Layout L(dp);
#ifndef MOE_CUDA_EMULATION
  // Above 48 KiB of dynamic shared memory a kernel must opt in (sm_80: up to 163 KiB).
  const cudaError_t err = cudaFuncSetAttribute(flash_forward_tc_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               int(Layout(kMaxDp).bytes));
  MOE_CHECK(err == cudaSuccess, "cuda::flash_attention_forward", "cudaFuncSetAttribute(", Layout(kMaxDp).bytes,
            " bytes of shared memory): ", cudaGetErrorString(err));
#endif
  const float scale = float(1.0 / std::sqrt(double(head_dim)));
  MOE_LAUNCH(flash_forward_tc_kernel, dim3(ceil_div(seq, kRows), unsigned(batch_heads)), kThreads, L.bytes, stream,
             dev(q), dev(k), dev(v), dev(out), lse, hs, seq, head_dim, dp, scale);
}

}  // namespace moe::cuda::attention_detail
