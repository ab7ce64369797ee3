// SIMT GEMM: one block of 16 x 16 threads per 64 x 64 tile of C, each thread a 4 x 4 micro-tile
// strided by 16 (conflict-free shared reads, coalesced stores), K in slices of 16 staged in fp32.
#include "core/cuda/gemm_simt.h"
#include "core/cuda/launch.h"

namespace moe::cuda {
namespace {

constexpr int kTile = 64;      // rows and columns of C per block
constexpr int kSlice = 16;     // K per shared-memory stage
constexpr int kSide = 16;      // threads per block side
constexpr int kMicro = kTile / kSide;
constexpr int kThreads = kSide * kSide;
constexpr int kPad = 4;        // keeps the transposed stores of a slice off one bank

// Bounded to its one block size: without the bound nvcc gives it 87 (sm_80) / 104 (sm_90) registers,
// which a 1024-thread block could not hold (scripts/check_cuda_resources.py).
template <class Tin, class Tout>
__global__ void __launch_bounds__(kThreads)
    gemm_simt_kernel(bool ta, bool tb, long m, long n, long k, float alpha, const Tin* a, long lda, const Tin* b,
                     long ldb, float beta, Tout* c, long ldc) {
  MOE_SHARED(float, as, [kSlice][kTile + kPad]);  // as[kk][i] = op(A)[row0 + i][k0 + kk]
  MOE_SHARED(float, bs, [kSlice][kTile + kPad]);  // bs[kk][j] = op(B)[k0 + kk][col0 + j]
  const int tx = int(threadIdx.x), ty = int(threadIdx.y), tid = ty * kSide + tx;
  const long row0 = long(blockIdx.y) * kTile, col0 = long(blockIdx.x) * kTile;
  float acc[kMicro][kMicro];
  MOE_UNROLL
  for (int r = 0; r < kMicro; ++r) {
    MOE_UNROLL
    for (int q = 0; q < kMicro; ++q) acc[r][q] = 0.0f;
  }
  for (long k0 = 0; k0 < k; k0 += kSlice) {
    // Consecutive threads read consecutive addresses of whichever dim is contiguous in memory.
    for (int e = tid; e < kSlice * kTile; e += kThreads) {
      const int kk = ta ? e / kTile : e % kSlice, i = ta ? e % kTile : e / kSlice;
      const long gi = row0 + i, gk = k0 + kk;
      float v = 0.0f;
      if (gi < m && gk < k) v = to_float(ta ? a[gk * lda + gi] : a[gi * lda + gk]);
      as[kk][i] = v;
    }
    for (int e = tid; e < kSlice * kTile; e += kThreads) {
      const int kk = tb ? e % kSlice : e / kTile, j = tb ? e / kSlice : e % kTile;
      const long gj = col0 + j, gk = k0 + kk;
      float v = 0.0f;
      if (gj < n && gk < k) v = to_float(tb ? b[gj * ldb + gk] : b[gk * ldb + gj]);
      bs[kk][j] = v;
    }
    __syncthreads();
    for (int kk = 0; kk < kSlice; ++kk) {
      float av[kMicro], bv[kMicro];
      MOE_UNROLL
      for (int r = 0; r < kMicro; ++r) av[r] = as[kk][ty + kSide * r];
      MOE_UNROLL
      for (int q = 0; q < kMicro; ++q) bv[q] = bs[kk][tx + kSide * q];
      MOE_UNROLL
      for (int r = 0; r < kMicro; ++r) {
        MOE_UNROLL
        for (int q = 0; q < kMicro; ++q) acc[r][q] = fmaf(av[r], bv[q], acc[r][q]);
      }
    }
    __syncthreads();
  }
  MOE_UNROLL
  for (int r = 0; r < kMicro; ++r) {
    const long i = row0 + ty + kSide * r;
    if (i >= m) continue;
    MOE_UNROLL
    for (int q = 0; q < kMicro; ++q) {
      const long j = col0 + tx + kSide * q;
      if (j >= n) continue;
      float v = alpha * acc[r][q];
      if (beta != 0.0f) v += beta * to_float(c[i * ldc + j]);
      c[i * ldc + j] = from_float<Tout>(v);
    }
  }
}

}  // namespace

template <class Tin, class Tout>
void gemm_simt(bool trans_a, bool trans_b, long m, long n, long k, float alpha, const Tin* a, long lda, const Tin* b,
               long ldb, float beta, Tout* c, long ldc, cudaStream_t stream) {
  MOE_CHECK(m >= 0 && n >= 0 && k >= 0, "cuda::gemm_simt", "bad shape m ", m, ", n ", n, ", k ", k);
  MOE_CHECK(ldc >= n && lda >= (trans_a ? m : k) && ldb >= (trans_b ? k : n), "cuda::gemm_simt",
            "leading dims too small: lda ", lda, ", ldb ", ldb, ", ldc ", ldc, " for m ", m, ", n ", n, ", k ", k,
            (trans_a ? " (A^T)" : ""), (trans_b ? " (B^T)" : ""));
  MOE_CHECK((m + kTile - 1) / kTile <= 65535, "cuda::gemm_simt", "m = ", m, " needs more than 65535 row tiles");
  if (m == 0 || n == 0) return;
  const dim3 grid(ceil_div(size_t(n), kTile), ceil_div(size_t(m), kTile));
  MOE_LAUNCH((gemm_simt_kernel<device_t<Tin>, device_t<Tout>>), grid, dim3(kSide, kSide), 0, stream, trans_a,
             trans_b, m, n, k, alpha, dev(a), lda, dev(b), ldb, beta, dev(c), ldc);
}

#define MOE_INSTANTIATE(Tin, Tout)                                                                               \
  template void gemm_simt<Tin, Tout>(bool, bool, long, long, long, float, const Tin*, long, const Tin*, long, float, \
                                     Tout*, long, cudaStream_t);
MOE_INSTANTIATE(float, float)
MOE_INSTANTIATE(bf16, float)
MOE_INSTANTIATE(bf16, bf16)
#undef MOE_INSTANTIATE

}  // namespace moe::cuda
