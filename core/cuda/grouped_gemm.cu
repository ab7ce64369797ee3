// Tensor-core grouped GEMM: 64 x 128 output tiles, 4 warps each owning 32 x 64 (2 x 4 wmma
// 16x16x16 bf16 fragments, fp32 accumulators). Operands go through shared memory in 32-deep
// slices: each thread fetches its 8-element chunks of the next slice into registers (16-byte
// loads where the leading dimension allows) while the warps multiply the current one, and
// ragged edges are zero-filled. Row tiles never straddle two experts: a small kernel numbers each
// expert's tiles so a block finds its expert by binary search. The output tile leaves through
// shared memory (reusing the operand slices' space) for coalesced, bounds-checked stores.
#include "core/cuda/caching_allocator.h"
#include "core/cuda/elementwise.h"
#include "core/cuda/grouped_gemm.h"
#include "core/cuda/launch.h"
#include "core/cuda/wmma.h"

namespace moe::cuda {
namespace {

namespace wmma = nvcuda::wmma;

constexpr int kBM = 64, kBN = 128, kBK = 32, kThreads = 128;
constexpr int kWarpRows = 32, kWarpCols = 64;  // a warp's part of the tile: 2 x 2 warps
constexpr int kFragRows = kWarpRows / 16, kFragCols = kWarpCols / 16;
constexpr int kLdAB = kBK + 8;  // bf16 row of a staged slice: 80 bytes, keeps fragments 32-byte aligned
constexpr int kLdC = kBN + 4;   // fp32 row of the output tile
constexpr int kChunk = 8;       // elements per fetch: 16 bytes of bf16
constexpr int kABytes = kBM * kLdAB * 2, kBBytes = kBN * kLdAB * 2, kCBytes = kBM * kLdC * 4;
constexpr int kSmemBytes = kABytes + kBBytes > kCBytes ? kABytes + kBBytes : kCBytes;
constexpr int kAChunks = kBM * kBK / kChunk / kThreads;  // chunks per thread: 2
constexpr int kBChunks = kBN * kBK / kChunk / kThreads;  // 4

struct alignas(128) Smem {
  unsigned char raw[kSmemBytes];
};
struct alignas(16) Pack {
  dbf16 v[kChunk];
};

// The staged slices: a[row][kk] = op(A), b[col][kk] = op(B) (a col_major matrix_b); c (the
// output tile) reuses the same bytes once the last slice has been multiplied.
struct Tiles {
  dbf16 (*a)[kLdAB];
  dbf16 (*b)[kLdAB];
  float (*c)[kLdC];
  __device__ explicit Tiles(Smem& s)
      : a(reinterpret_cast<dbf16 (*)[kLdAB]>(s.raw)),
        b(reinterpret_cast<dbf16 (*)[kLdAB]>(s.raw + kABytes)),
        c(reinterpret_cast<float (*)[kLdC]>(s.raw)) {}
};

// One operand slice as seen from global memory: element (o, kk) of the tile (o = row or column of
// the output, kk = 0..kBK-1 along the reduction) is at base[o * ld + kk] when k_contiguous, else at
// base[kk * ld + o]; only o < o_valid and kk < k_valid exist (zeros elsewhere). `vec`: ld and
// base are multiples of 8 elements, so a whole in-range chunk is one aligned 16-byte load.
struct Operand {
  const dbf16* base;
  long ld;
  int o_valid, k_valid;
  bool k_contiguous, vec;
};

// Chunk c of an O-wide tile: 8 consecutive elements along the contiguous dimension.
template <int O>
__device__ __forceinline__ void chunk_origin(const Operand& op, int c, int& o, int& kk) {
  if (op.k_contiguous)
    o = c / (kBK / kChunk), kk = c % (kBK / kChunk) * kChunk;
  else
    kk = c / (O / kChunk), o = c % (O / kChunk) * kChunk;
}

template <int O>
__device__ void fetch(const Operand& op, int c, Pack& p) {
  int o, kk;
  chunk_origin<O>(op, c, o, kk);
  const int span_o = op.k_contiguous ? 1 : kChunk, span_k = op.k_contiguous ? kChunk : 1;
  const dbf16* src = op.base + (op.k_contiguous ? o * op.ld + kk : kk * op.ld + o);
  if (op.vec && o + span_o <= op.o_valid && kk + span_k <= op.k_valid) {
    p = *reinterpret_cast<const Pack*>(src);
    return;
  }
  const dbf16 zero = from_float<dbf16>(0.0f);
  for (int e = 0; e < kChunk; ++e) {
    const int oe = o + (op.k_contiguous ? 0 : e), ke = kk + (op.k_contiguous ? e : 0);
    p.v[e] = oe < op.o_valid && ke < op.k_valid ? src[e] : zero;
  }
}

template <int O>
__device__ void stage(const Operand& op, int c, const Pack& p, dbf16 (*tile)[kLdAB]) {
  int o, kk;
  chunk_origin<O>(op, c, o, kk);
  for (int e = 0; e < kChunk; ++e) {
    if (op.k_contiguous)
      tile[o][kk + e] = p.v[e];
    else
      tile[o + e][kk] = p.v[e];
  }
}

using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, dbf16, wmma::row_major>;
using FragB = wmma::fragment<wmma::matrix_b, 16, 16, 16, dbf16, wmma::col_major>;
using FragC = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

// The warp's origin in the tile (2 x 2 warps of kWarpRows x kWarpCols).
__device__ __forceinline__ void warp_origin(int& wr, int& wc) {
  const int warp = threadIdx.x / 32;
  wr = (warp / (kBN / kWarpCols)) * kWarpRows;
  wc = (warp % (kBN / kWarpCols)) * kWarpCols;
}

// The warp multiplies its part of the staged slices.
__device__ void mma_slice(const Tiles& t, FragC (&acc)[kFragRows][kFragCols]) {
  int wr, wc;
  warp_origin(wr, wc);
  for (int ks = 0; ks < kBK; ks += 16) {
    FragA fa[kFragRows];
    FragB fb[kFragCols];
    for (int i = 0; i < kFragRows; ++i) wmma::load_matrix_sync(fa[i], &t.a[wr + 16 * i][ks], kLdAB);
    for (int j = 0; j < kFragCols; ++j) wmma::load_matrix_sync(fb[j], &t.b[wc + 16 * j][ks], kLdAB);
    for (int i = 0; i < kFragRows; ++i)
      for (int j = 0; j < kFragCols; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
  }
}

// acc += sum over the slices of op(A) op(B); `next(s)` gives the operands of slice s (both
// operands advance by kBK along the reduction), `slices` of them.
template <class NextA, class NextB>
__device__ void mainloop(const Tiles& t, FragC (&acc)[kFragRows][kFragCols], int slices, NextA next_a, NextB next_b) {
  for (int i = 0; i < kFragRows; ++i)
    for (int j = 0; j < kFragCols; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
  Pack pa[kAChunks], pb[kBChunks];
  if (slices > 0) {
    const Operand a = next_a(0), b = next_b(0);
    for (int i = 0; i < kAChunks; ++i) fetch<kBM>(a, threadIdx.x + i * kThreads, pa[i]);
    for (int i = 0; i < kBChunks; ++i) fetch<kBN>(b, threadIdx.x + i * kThreads, pb[i]);
  }
  for (int s = 0; s < slices; ++s) {
    {
      const Operand a = next_a(s), b = next_b(s);
      for (int i = 0; i < kAChunks; ++i) stage<kBM>(a, threadIdx.x + i * kThreads, pa[i], t.a);
      for (int i = 0; i < kBChunks; ++i) stage<kBN>(b, threadIdx.x + i * kThreads, pb[i], t.b);
    }
    __syncthreads();
    if (s + 1 < slices) {  // the next slice's loads are in flight while the tensor cores work
      const Operand a = next_a(s + 1), b = next_b(s + 1);
      for (int i = 0; i < kAChunks; ++i) fetch<kBM>(a, threadIdx.x + i * kThreads, pa[i]);
      for (int i = 0; i < kBChunks; ++i) fetch<kBN>(b, threadIdx.x + i * kThreads, pb[i]);
    }
    mma_slice(t, acc);
    __syncthreads();  // every warp is done with the slices before they are overwritten
  }
}

// Writes the accumulators of rows [0, nrows) x cols [0, ncols) of the tile to out (row stride ld).
template <class Tout>
__device__ void store_tile(const Tiles& t, FragC (&acc)[kFragRows][kFragCols], Tout* out, long ld, int nrows, int ncols,
                           bool accumulate) {
  int wr, wc;
  warp_origin(wr, wc);
  for (int i = 0; i < kFragRows; ++i)
    for (int j = 0; j < kFragCols; ++j)
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

__device__ __forceinline__ int clamp_extent(long n, int cap) { return n < 0 ? 0 : (n > cap ? cap : int(n)); }

// C rows grouped by expert: C[r, n0..] (+)= A[r, :] op(B_e). kTransB: B_e is stored [n_out, k_red]
// (the forward's w), else [k_red, n_out] (the input gradient's w). vec_a / vec_b: see Operand.
template <bool kTransB, class Tout>
__global__ void __launch_bounds__(kThreads)
    grouped_rows_kernel(const dbf16* A, const dbf16* B, const int32_t* offsets, const int32_t* tile_starts, int experts,
                        long n_out, long k_red, Tout* C, bool accumulate, bool vec_a, bool vec_b) {
  MOE_SHARED(Smem, smem, );
  const Tiles t(smem);
  const int tile = blockIdx.x;
  if (tile >= tile_starts[experts]) return;  // the grid is an upper bound on the tiles
  int lo = 0, hi = experts - 1;              // the last expert whose first tile is <= tile
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (tile_starts[mid] <= tile)
      lo = mid;
    else
      hi = mid - 1;
  }
  const int e = lo;
  const long row0 = offsets[e] + long(tile - tile_starts[e]) * kBM, row_end = offsets[e + 1];
  const long n0 = long(blockIdx.y) * kBN;
  const dbf16* Be = B + long(e) * n_out * k_red;
  const int rows = clamp_extent(row_end - row0, kBM), cols = clamp_extent(n_out - n0, kBN);
  FragC acc[kFragRows][kFragCols];
  mainloop(
      t, acc, int((k_red + kBK - 1) / kBK),
      [&](int s) {
        const long k0 = long(s) * kBK;
        return Operand{A + row0 * k_red + k0, k_red, rows, clamp_extent(k_red - k0, kBK), true, vec_a};
      },
      [&](int s) {
        const long k0 = long(s) * kBK;
        return kTransB ? Operand{Be + n0 * k_red + k0, k_red, cols, clamp_extent(k_red - k0, kBK), true, vec_b}
                       : Operand{Be + k0 * n_out + n0, n_out, cols, clamp_extent(k_red - k0, kBK), false, vec_b};
      });
  store_tile(t, acc, C + row0 * n_out + n0, n_out, rows, cols, accumulate);
}

// dW_e[m0.., n0..] (+)= A_e^T B_e over the expert's rows: A [rows, M], B [rows, K], dW [E, M, K].
template <class Tout>
__global__ void __launch_bounds__(kThreads)
    grouped_weights_kernel(const dbf16* A, const dbf16* B, const int32_t* offsets, long M, long K, Tout* dW,
                           bool accumulate, bool vec_a, bool vec_b) {
  MOE_SHARED(Smem, smem, );
  const Tiles t(smem);
  const int e = blockIdx.y;
  const long tiles_n = (K + kBN - 1) / kBN;
  const long m0 = long(blockIdx.x / tiles_n) * kBM, n0 = long(blockIdx.x % tiles_n) * kBN;
  const long r_begin = offsets[e], r_end = offsets[e + 1];
  const int rows = clamp_extent(M - m0, kBM), cols = clamp_extent(K - n0, kBN);
  FragC acc[kFragRows][kFragCols];
  mainloop(
      t, acc, int((r_end - r_begin + kBK - 1) / kBK),
      [&](int s) {
        const long r0 = r_begin + long(s) * kBK;
        return Operand{A + r0 * M + m0, M, rows, clamp_extent(r_end - r0, kBK), false, vec_a};
      },
      [&](int s) {
        const long r0 = r_begin + long(s) * kBK;
        return Operand{B + r0 * K + n0, K, cols, clamp_extent(r_end - r0, kBK), false, vec_b};
      });
  store_tile(t, acc, dW + long(e) * M * K + m0 * K + n0, K, rows, cols, accumulate);
}

// 16-byte loads need the row stride and the base address to be multiples of 8 bf16.
bool vectorizable(const bf16* p, long ld) { return ld % kChunk == 0 && reinterpret_cast<uintptr_t>(p) % 16 == 0; }

void check_args(const char* op, int experts, long rows, long M, long K) {
  MOE_CHECK(experts >= 1 && experts <= 65535 && rows >= 0 && M >= 1 && K >= 1, op, "experts = ", experts,
            ", rows = ", rows, ", M = ", M, ", K = ", K, ": expected 1 <= experts <= 65535, rows >= 0, M, K >= 1");
}

template <bool kTransB, class Tout>
void launch_rows(const bf16* A, const bf16* B, const int32_t* offsets, int experts, long rows, long n_out, long k_red,
                 Tout* C, bool accumulate, cudaStream_t stream) {
  if (rows == 0) return;
  Workspace<int32_t> tile_starts{size_t(experts) + 1};
  MOE_LAUNCH(tile_starts_kernel, 1, 32, 0, stream, offsets, experts, tile_starts.get());
  // Each expert's partial last tile adds at most one tile to rows / kBM.
  const dim3 grid(ceil_div(rows, kBM) + unsigned(experts), ceil_div(n_out, kBN));
  MOE_LAUNCH((grouped_rows_kernel<kTransB, device_t<Tout>>), grid, kThreads, 0, stream, dev(A), dev(B), offsets,
             static_cast<const int32_t*>(tile_starts.get()), experts, n_out, k_red, dev(C), accumulate,
             vectorizable(A, k_red), vectorizable(B, kTransB ? k_red : n_out));
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
             accumulate, vectorizable(dy, M), vectorizable(x, K));
}

void experts_forward(const bf16* x, const bf16* w1, const bf16* w3, const bf16* w2, const int32_t* offsets, int experts,
                     long rows, long d_model, long hidden, bf16* h1, bf16* h3, bf16* h, bf16* y, cudaStream_t stream) {
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

#define MOE_INSTANTIATE(T)                                                                                    \
  template void grouped_gemm_nt<T>(const bf16*, const bf16*, const int32_t*, int, long, long, long, T*, bool, \
                                   cudaStream_t);                                                             \
  template void grouped_gemm_nn<T>(const bf16*, const bf16*, const int32_t*, int, long, long, long, T*, bool, \
                                   cudaStream_t);                                                             \
  template void grouped_gemm_tn<T>(const bf16*, const bf16*, const int32_t*, int, long, long, long, T*, bool, \
                                   cudaStream_t);
MOE_INSTANTIATE(float)
MOE_INSTANTIATE(bf16)
#undef MOE_INSTANTIATE

}  // namespace moe::cuda
