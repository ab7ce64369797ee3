// Tensor-core grouped GEMM: 64 x 64 output tiles, 4 warps of 2 x 2 wmma 16x16x16 bf16 fragments,
// operands staged through shared memory in 32-deep slices (zero-padded at ragged edges), the
// fp32 accumulators written back through shared memory. Row tiles never straddle two experts:
// a small kernel numbers each expert's tiles so a block finds its expert by binary search.
#include "core/cuda/caching_allocator.h"
#include "core/cuda/elementwise.h"
#include "core/cuda/grouped_gemm.h"
#include "core/cuda/launch.h"
#include "core/cuda/wmma.h"

namespace moe::cuda {
namespace {

namespace wmma = nvcuda::wmma;

constexpr int kBM = 64, kBN = 64, kBK = 32, kThreads = 128;
constexpr int kLdAB = kBK + 8;  // bf16 row of a staged slice: 80 bytes, keeps fragments 32-byte aligned
constexpr int kLdC = kBN + 4;   // fp32 row of the output tile: 272 bytes

struct alignas(128) Tiles {
  dbf16 a[kBM][kLdAB];  // op(A)[row][kk]
  dbf16 b[kBN][kLdAB];  // op(B)[kk][col] stored column by column: a col_major matrix_b
  float c[kBM][kLdC];
};

using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, dbf16, wmma::row_major>;
using FragB = wmma::fragment<wmma::matrix_b, 16, 16, 16, dbf16, wmma::col_major>;
using FragC = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

// The block's warp (2 x 2 layout) multiplies its 32 x 32 part of the staged slices.
__device__ void mma_slice(Tiles& t, FragC (&acc)[2][2]) {
  const int warp = threadIdx.x / 32, wr = (warp / 2) * 32, wc = (warp % 2) * 32;
  for (int ks = 0; ks < kBK; ks += 16) {
    FragA fa[2];
    FragB fb[2];
    for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], &t.a[wr + 16 * i][ks], kLdAB);
    for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(fb[j], &t.b[wc + 16 * j][ks], kLdAB);
    for (int i = 0; i < 2; ++i)
      for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
  }
}

// Writes the accumulators of rows [0, nrows) x cols [0, ncols) of the tile to out (row stride ld).
template <class Tout>
__device__ void store_tile(Tiles& t, FragC (&acc)[2][2], Tout* out, long ld, int nrows, int ncols, bool accumulate) {
  const int warp = threadIdx.x / 32, wr = (warp / 2) * 32, wc = (warp % 2) * 32;
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(&t.c[wr + 16 * i][wc + 16 * j], acc[i][j], kLdC, wmma::mem_row_major);
  __syncthreads();
  for (int idx = threadIdx.x; idx < kBM * kBN; idx += kThreads) {
    const int r = idx / kBN, c = idx % kBN;
    if (r < nrows && c < ncols) {
      Tout* dst = out + r * ld + c;
      const float v = t.c[r][c] + (accumulate ? to_float(*dst) : 0.0f);
      *dst = from_float<Tout>(v);
    }
  }
}

__device__ __forceinline__ dbf16 bf16_zero() { return from_float<dbf16>(0.0f); }

// tile_starts[e] = number of kBM-row tiles of the experts before e; tile_starts[experts] = total.
__global__ void tile_starts_kernel(const int32_t* offsets, int experts, int32_t* tile_starts) {
  if (threadIdx.x != 0) return;
  int32_t total = 0;
  for (int e = 0; e < experts; ++e) {
    tile_starts[e] = total;
    total += (offsets[e + 1] - offsets[e] + kBM - 1) / kBM;
  }
  tile_starts[experts] = total;
}

// C rows grouped by expert: C[r, n0..] (+)= A[r, :] op(B_e). kTransB: B_e is stored [n_out, k_red]
// (the forward's w), else [k_red, n_out] (the input gradient's w).
template <bool kTransB, class Tout>
__global__ void __launch_bounds__(kThreads)
    grouped_rows_kernel(const dbf16* A, const dbf16* B, const int32_t* offsets, const int32_t* tile_starts,
                        int experts, long n_out, long k_red, Tout* C, bool accumulate) {
  MOE_SHARED(Tiles, t, );
  const int tile = blockIdx.x;
  if (tile >= tile_starts[experts]) return;  // the grid is an upper bound on the tiles
  int lo = 0, hi = experts - 1;               // the last expert whose first tile is <= tile
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (tile_starts[mid] <= tile) lo = mid;
    else hi = mid - 1;
  }
  const int e = lo;
  const long row0 = offsets[e] + long(tile - tile_starts[e]) * kBM, row_end = offsets[e + 1];
  const long n0 = long(blockIdx.y) * kBN;
  const dbf16* Be = B + long(e) * n_out * k_red;
  FragC acc[2][2];
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
  for (long k0 = 0; k0 < k_red; k0 += kBK) {
    for (int idx = threadIdx.x; idx < kBM * kBK; idx += kThreads) {
      const int r = idx / kBK, kk = idx % kBK;
      const bool ok = row0 + r < row_end && k0 + kk < k_red;
      t.a[r][kk] = ok ? A[(row0 + r) * k_red + k0 + kk] : bf16_zero();
    }
    for (int idx = threadIdx.x; idx < kBN * kBK; idx += kThreads) {
      // Consecutive threads read consecutive addresses in either storage order.
      const int j = kTransB ? idx / kBK : idx % kBN, kk = kTransB ? idx % kBK : idx / kBN;
      const bool ok = n0 + j < n_out && k0 + kk < k_red;
      t.b[j][kk] = !ok ? bf16_zero() : kTransB ? Be[(n0 + j) * k_red + k0 + kk] : Be[(k0 + kk) * n_out + n0 + j];
    }
    __syncthreads();
    mma_slice(t, acc);
    __syncthreads();
  }
  const long nrows = row_end - row0 < kBM ? row_end - row0 : kBM, ncols = n_out - n0 < kBN ? n_out - n0 : kBN;
  store_tile(t, acc, C + row0 * n_out + n0, n_out, int(nrows), int(ncols), accumulate);
}

// dW_e[m0.., n0..] (+)= A_e^T B_e over the expert's rows: A [rows, M], B [rows, K], dW [E, M, K].
template <class Tout>
__global__ void __launch_bounds__(kThreads)
    grouped_weights_kernel(const dbf16* A, const dbf16* B, const int32_t* offsets, long M, long K, Tout* dW,
                           bool accumulate) {
  MOE_SHARED(Tiles, t, );
  const int e = blockIdx.y;
  const long tiles_n = (K + kBN - 1) / kBN;
  const long m0 = long(blockIdx.x / tiles_n) * kBM, n0 = long(blockIdx.x % tiles_n) * kBN;
  const long r_begin = offsets[e], r_end = offsets[e + 1];
  FragC acc[2][2];
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
  for (long r0 = r_begin; r0 < r_end; r0 += kBK) {
    for (int idx = threadIdx.x; idx < kBM * kBK; idx += kThreads) {
      const int i = idx % kBM, kk = idx / kBM;  // consecutive threads: consecutive columns of A
      const bool ok = m0 + i < M && r0 + kk < r_end;
      t.a[i][kk] = ok ? A[(r0 + kk) * M + m0 + i] : bf16_zero();
    }
    for (int idx = threadIdx.x; idx < kBN * kBK; idx += kThreads) {
      const int j = idx % kBN, kk = idx / kBN;
      const bool ok = n0 + j < K && r0 + kk < r_end;
      t.b[j][kk] = ok ? B[(r0 + kk) * K + n0 + j] : bf16_zero();
    }
    __syncthreads();
    mma_slice(t, acc);
    __syncthreads();
  }
  const long nrows = M - m0 < kBM ? M - m0 : kBM, ncols = K - n0 < kBN ? K - n0 : kBN;
  store_tile(t, acc, dW + long(e) * M * K + m0 * K + n0, K, int(nrows), int(ncols), accumulate);
}

void check_args(const char* op, int experts, long rows, long M, long K) {
  MOE_CHECK(experts >= 1 && experts <= 65535 && rows >= 0 && M >= 1 && K >= 1, op, "experts = ", experts, ", rows = ",
            rows, ", M = ", M, ", K = ", K, ": expected 1 <= experts <= 65535, rows >= 0, M, K >= 1");
}

template <bool kTransB, class Tout>
void launch_rows(const bf16* A, const bf16* B, const int32_t* offsets, int experts, long rows,
                 long n_out, long k_red, Tout* C, bool accumulate, cudaStream_t stream) {
  if (rows == 0) return;
  Workspace<int32_t> tile_starts{size_t(experts) + 1};
  MOE_LAUNCH(tile_starts_kernel, 1, 32, 0, stream, offsets, experts, tile_starts.get());
  // Each expert's partial last tile adds at most one tile to rows / kBM.
  const dim3 grid(ceil_div(rows, kBM) + unsigned(experts), ceil_div(n_out, kBN));
  MOE_LAUNCH((grouped_rows_kernel<kTransB, device_t<Tout>>), grid, kThreads, 0, stream, dev(A), dev(B), offsets,
             static_cast<const int32_t*>(tile_starts.get()), experts, n_out, k_red, dev(C), accumulate);
}

}  // namespace

template <class Tout>
void grouped_gemm_nt(const bf16* x, const bf16* w, const int32_t* offsets, int experts, long rows, long M, long K,
                     Tout* y, bool accumulate, cudaStream_t stream) {
  check_args("cuda::grouped_gemm_nt", experts, rows, M, K);
  launch_rows<true>(x, w, offsets, experts, rows, M, K, y, accumulate, stream);
}

template <class Tout>
void grouped_gemm_nn(const bf16* dy, const bf16* w, const int32_t* offsets, int experts, long rows, long M, long K,
                     Tout* dx, bool accumulate, cudaStream_t stream) {
  check_args("cuda::grouped_gemm_nn", experts, rows, M, K);
  launch_rows<false>(dy, w, offsets, experts, rows, K, M, dx, accumulate, stream);
}

template <class Tout>
void grouped_gemm_tn(const bf16* dy, const bf16* x, const int32_t* offsets, int experts, long rows, long M, long K,
                     Tout* dw, bool accumulate, cudaStream_t stream) {
  check_args("cuda::grouped_gemm_tn", experts, rows, M, K);
  const dim3 grid(ceil_div(M, kBM) * ceil_div(K, kBN), unsigned(experts));
  MOE_LAUNCH(grouped_weights_kernel<device_t<Tout>>, grid, kThreads, 0, stream, dev(dy), dev(x), offsets, M, K, dev(dw),
             accumulate);
}

void experts_forward(const bf16* x, const bf16* w1, const bf16* w3, const bf16* w2, const int32_t* offsets,
                     int experts, long rows, long d_model, long hidden, bf16* h1, bf16* h3, bf16* h, bf16* y,
                     cudaStream_t stream) {
  grouped_gemm_nt(x, w1, offsets, experts, rows, hidden, d_model, h1, false, stream);
  grouped_gemm_nt(x, w3, offsets, experts, rows, hidden, d_model, h3, false, stream);
  swiglu_forward(h1, h3, h, size_t(rows * hidden), stream);
  grouped_gemm_nt(h, w2, offsets, experts, rows, d_model, hidden, y, false, stream);
}

void experts_backward(const bf16* x, const bf16* w1, const bf16* w3, const bf16* w2, const int32_t* offsets,
                      int experts, long rows, long d_model, long hidden, const bf16* h1, const bf16* h3, const bf16* h,
                      const bf16* dy, bf16* dx, float* dw1, float* dw3, float* dw2, cudaStream_t stream) {
  Workspace<bf16> dh{size_t(rows * hidden)}, dh1{size_t(rows * hidden)}, dh3{size_t(rows * hidden)};
  Workspace<float> dx32{size_t(rows * d_model)};
  grouped_gemm_nn(dy, w2, offsets, experts, rows, d_model, hidden, dh.get(), false, stream);  // dh = dy w2
  grouped_gemm_tn(dy, h, offsets, experts, rows, d_model, hidden, dw2, false, stream);        // dw2 = dy^T h
  swiglu_backward(h1, h3, static_cast<const bf16*>(dh.get()), dh1.get(), dh3.get(), size_t(rows * hidden), stream);
  grouped_gemm_nn(static_cast<const bf16*>(dh1.get()), w1, offsets, experts, rows, hidden, d_model, dx32.get(), false,
                  stream);
  grouped_gemm_nn(static_cast<const bf16*>(dh3.get()), w3, offsets, experts, rows, hidden, d_model, dx32.get(), true,
                  stream);
  if (rows > 0) cast_f32_to_bf16(dx32.get(), dx, size_t(rows * d_model), stream);
  grouped_gemm_tn(static_cast<const bf16*>(dh1.get()), x, offsets, experts, rows, hidden, d_model, dw1, false, stream);
  grouped_gemm_tn(static_cast<const bf16*>(dh3.get()), x, offsets, experts, rows, hidden, d_model, dw3, false, stream);
}

#define MOE_INSTANTIATE(T)                                                                                       \
  template void grouped_gemm_nt<T>(const bf16*, const bf16*, const int32_t*, int, long, long, long, T*, bool,    \
                                   cudaStream_t);                                                                \
  template void grouped_gemm_nn<T>(const bf16*, const bf16*, const int32_t*, int, long, long, long, T*, bool,    \
                                   cudaStream_t);                                                                \
  template void grouped_gemm_tn<T>(const bf16*, const bf16*, const int32_t*, int, long, long, long, T*, bool,    \
                                   cudaStream_t);
MOE_INSTANTIATE(float)
MOE_INSTANTIATE(bf16)
#undef MOE_INSTANTIATE

}  // namespace moe::cuda
