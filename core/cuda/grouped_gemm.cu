// Tensor-core grouped GEMM, built the way Ampere / Hopper-class GEMMs are: 128 x 128 output tiles,
// 8 warps each owning 64 x 32 (4 x 2 wmma 16x16x16 bf16 fragments, fp32 accumulators), and a
// 4-stage cp.async pipeline over 32-deep slices of the reduction in dynamic shared memory: while
// the warps multiply slice s, the copies of slices s+1 .. s+3 are in flight. Each operand is staged
// in its natural global layout (rows padded by 8 bf16 against bank conflicts) and read by the
// wmma fragment layout that matches it, so nothing is transposed on the way:
//   nt: A = x [rows, K] -> [m][k] row_major matrix_a; B = w_e [M, K] -> [n][k] col_major matrix_b
//   nn: A = dy [rows, M] -> [m][k] row_major;          B = w_e [M, K] -> [k][n] row_major
//   tn: A = dy_e [r, M] -> [k][m] col_major;            B = x_e [r, K] -> [k][n] row_major
// Ragged edges are zero-filled by the copies themselves (cp.async src-size 0). When an operand's
// row stride or base address is not a multiple of 16 bytes (odd K or M) its 16-byte chunks cannot
// be copied whole: that operand falls back to element loads stored into the same stage (correct,
// slower). Row tiles never straddle two experts: a small kernel numbers each expert's tiles so a
// block finds its expert by binary search. The output tile leaves through shared memory (reusing
// the pipeline's space) in 16-byte stores where the output's row stride allows.
#include "core/cuda/async_copy.h"
#include "core/cuda/caching_allocator.h"
#include "core/cuda/elementwise.h"
#include "core/cuda/grouped_gemm.h"
#include "core/cuda/grouped_gemm_sm90.h"
#include "core/cuda/launch.h"
#include "core/cuda/wmma.h"

#include <type_traits>

namespace moe::cuda {
namespace {

namespace wmma = nvcuda::wmma;

constexpr int kBM = 128, kBN = 128, kBK = 32, kThreads = 256, kStages = 4;
constexpr int kWarpRows = 64, kWarpCols = 32;  // a warp's part of the tile: 2 x 4 warps
constexpr int kFragRows = kWarpRows / 16, kFragCols = kWarpCols / 16;
constexpr int kChunk = 8;  // bf16 elements per 16-byte copy
constexpr int kPad = 8;    // bf16 padding of a staged row: rows 80 or 272 bytes apart, conflict-free
constexpr int kLdC = kBN + 4;  // fp32 row of the output tile
static_assert(kBM == kBN, "one staging geometry serves both operands");

// A staged operand slice: [kBM][kBK + kPad] when its reduction index is contiguous in global
// memory (k-major rows), else [kBK][kBM + kPad].
template <bool kKContig>
struct Stage {
  static constexpr int ld = kKContig ? kBK + kPad : kBM + kPad;
  static constexpr int bytes = (kKContig ? kBM : kBK) * ld * 2;
  static constexpr int chunks = kBM * kBK / kChunk / kThreads;  // copies per thread: 2
};
// One pipeline stage holds a slice of each operand; the output tile (fp32) reuses the stages' space.
template <bool kAK, bool kBK_>
struct Pipeline {
  static constexpr int stage_bytes = Stage<kAK>::bytes + Stage<kBK_>::bytes;
  static constexpr int pipe_bytes = kStages * stage_bytes, out_bytes = kBM * kLdC * 4;
  static constexpr int smem_bytes = pipe_bytes > out_bytes ? pipe_bytes : out_bytes;
};
static_assert(Stage<true>::bytes % 128 == 0 && Stage<false>::bytes % 128 == 0, "stages keep 128-byte alignment");

// One operand as seen from global memory: element (o, kk) (o = row or column of the output tile,
// kk = reduction index from the start of the block's range) is at base[o * ld + kk] when
// k-contiguous, else at base[kk * ld + o]; only o < o_valid and kk < k_len exist (zeros elsewhere).
// `vec`: ld and base are multiples of 8 elements, so every in-range chunk is one aligned copy.
struct Operand {
  const dbf16* base;
  long ld;
  int o_valid;
  long k_len;
  bool vec;
};

// Issues the copies of slice s of op into tile (or, without `vec`, loads and stores it at once).
// kAsync: every operand of the kernel is vectorizable, so the element path is not compiled in.
template <bool kKContig, bool kAsync>
__device__ __forceinline__ void load_slice(const Operand& op, int s, dbf16* tile) {
  using S = Stage<kKContig>;
  const long k0 = long(s) * kBK;
  const dbf16* base = op.base + (kKContig ? k0 : k0 * op.ld);
  const long k_left = op.k_len - k0;
  const int k_valid = k_left < kBK ? int(k_left) : kBK;
  MOE_UNROLL
  for (int i = 0; i < S::chunks; ++i) {
    const int c = int(threadIdx.x) + i * kThreads;
    const int o = kKContig ? c / (kBK / kChunk) : c % (kBM / kChunk) * kChunk;
    const int kk = kKContig ? c % (kBK / kChunk) * kChunk : c / (kBM / kChunk);
    dbf16* dst = tile + (kKContig ? o * S::ld + kk : kk * S::ld + o);
    const dbf16* src = base + (kKContig ? o * op.ld + kk : kk * op.ld + o);
    if (kAsync || op.vec) {
      // ld and the extents along the contiguous dimension are multiples of 8: a chunk is whole or out.
      const bool in = o < op.o_valid && kk < k_valid;
      cp_async16(dst, in ? src : op.base, in);
    } else {
      const dbf16 zero = from_float<dbf16>(0.0f);
      MOE_UNROLL
      for (int e = 0; e < kChunk; ++e) {
        const int oe = o + (kKContig ? 0 : e), ke = kk + (kKContig ? e : 0);
        dst[e] = oe < op.o_valid && ke < k_valid ? src[e] : zero;
      }
    }
  }
}

using FragC = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;
using Acc = FragC[kFragRows][kFragCols];

// The warp's origin in the tile (2 x 4 warps of kWarpRows x kWarpCols).
__device__ __forceinline__ void warp_origin(int& wr, int& wc) {
  const int warp = int(threadIdx.x) / 32;
  wr = (warp / (kBN / kWarpCols)) * kWarpRows;
  wc = (warp % (kBN / kWarpCols)) * kWarpCols;
}

// The warp multiplies its part of one staged slice: a [m][k] is row_major, [k][m] col_major;
// b [n][k] is col_major, [k][n] row_major.
template <bool kAK, bool kBK_>
__device__ __forceinline__ void mma_slice(const dbf16* sa, const dbf16* sb, Acc& acc, int wr, int wc) {
  using LA = std::conditional_t<kAK, wmma::row_major, wmma::col_major>;
  using LB = std::conditional_t<kBK_, wmma::col_major, wmma::row_major>;
  using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, dbf16, LA>;
  using FragB = wmma::fragment<wmma::matrix_b, 16, 16, 16, dbf16, LB>;
  constexpr int lda = Stage<kAK>::ld, ldb = Stage<kBK_>::ld;
  MOE_UNROLL
  for (int ks = 0; ks < kBK; ks += 16) {
    FragA fa[kFragRows];
    FragB fb[kFragCols];
    MOE_UNROLL
    for (int i = 0; i < kFragRows; ++i) {
      const int m = wr + 16 * i;
      wmma::load_matrix_sync(fa[i], sa + (kAK ? m * lda + ks : ks * lda + m), lda);
    }
    MOE_UNROLL
    for (int j = 0; j < kFragCols; ++j) {
      const int n = wc + 16 * j;
      wmma::load_matrix_sync(fb[j], sb + (kBK_ ? n * ldb + ks : ks * ldb + n), ldb);
    }
    MOE_UNROLL
    for (int i = 0; i < kFragRows; ++i)
      MOE_UNROLL
      for (int j = 0; j < kFragCols; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
  }
}

// acc = sum over `slices` 32-deep slices of op(A) op(B), through the kStages-deep pipeline. Every
// thread commits one group per slice slot (empty past the end), so wait<kStages - 2> at slice s
// always means "slices 0 .. s have landed"; the barrier after it publishes them to every warp and
// also tells that every warp is done with slice s - 1, whose buffer the next copies overwrite.
template <bool kAK, bool kBK_, bool kAsync>
__device__ void mainloop(unsigned char* smem, Acc& acc, int slices, const Operand& a, const Operand& b) {
  constexpr int kStageBytes = Pipeline<kAK, kBK_>::stage_bytes;
  auto tile_a = [&](int s) { return reinterpret_cast<dbf16*>(smem + (s % kStages) * kStageBytes); };
  auto tile_b = [&](int s) {
    return reinterpret_cast<dbf16*>(smem + (s % kStages) * kStageBytes + Stage<kAK>::bytes);
  };
  MOE_UNROLL
  for (int i = 0; i < kFragRows; ++i)
    MOE_UNROLL
    for (int j = 0; j < kFragCols; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
  int wr, wc;
  warp_origin(wr, wc);
  MOE_UNROLL
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < slices) {
      load_slice<kAK, kAsync>(a, s, tile_a(s));
      load_slice<kBK_, kAsync>(b, s, tile_b(s));
    }
    cp_async_commit();
  }
  for (int s = 0; s < slices; ++s) {
    cp_async_wait<kStages - 2>();
    __syncthreads();
    const int next = s + kStages - 1;
    if (next < slices) {
      load_slice<kAK, kAsync>(a, next, tile_a(next));
      load_slice<kBK_, kAsync>(b, next, tile_b(next));
    }
    cp_async_commit();
    mma_slice<kAK, kBK_>(tile_a(s), tile_b(s), acc, wr, wc);
  }
  cp_async_wait<0>();  // only empty groups remain, but nothing may land in the output tile
  __syncthreads();     // every warp is done with the slices before the output tile reuses them
}

// Writes rows [0, nrows) x cols [0, ncols) of the accumulators to out (row stride ld), adding to
// what is there when `accumulate`. `vec`: ld and out are 16-byte aligned, so whole 8-column chunks
// move as 16-byte accesses.
template <class Tout>
__device__ void store_tile(unsigned char* smem, Acc& acc, Tout* out, long ld, int nrows, int ncols, bool accumulate,
                           bool vec) {
  float* c = reinterpret_cast<float*>(smem);
  int wr, wc;
  warp_origin(wr, wc);
  MOE_UNROLL
  for (int i = 0; i < kFragRows; ++i)
    MOE_UNROLL
    for (int j = 0; j < kFragCols; ++j)
      wmma::store_matrix_sync(c + (wr + 16 * i) * kLdC + wc + 16 * j, acc[i][j], kLdC, wmma::mem_row_major);
  __syncthreads();
  constexpr int kPer = 16 / int(sizeof(Tout));  // elements per 16-byte access
  struct alignas(16) Vec {
    Tout v[kPer];
  };
  for (int idx = int(threadIdx.x); idx < kBM * kBN / kChunk; idx += kThreads) {
    const int r = idx / (kBN / kChunk), c0 = idx % (kBN / kChunk) * kChunk;
    if (r >= nrows || c0 >= ncols) continue;
    const float* src = c + r * kLdC + c0;
    Tout* dst = out + r * ld + c0;
    if (vec && c0 + kChunk <= ncols) {
      MOE_UNROLL
      for (int h = 0; h < kChunk; h += kPer) {
        Vec v;
        if (accumulate) v = *reinterpret_cast<const Vec*>(dst + h);
        MOE_UNROLL
        for (int e = 0; e < kPer; ++e)
          v.v[e] = from_float<Tout>(src[h + e] + (accumulate ? to_float(v.v[e]) : 0.0f));
        *reinterpret_cast<Vec*>(dst + h) = v;
      }
    } else {
      for (int e = 0; e < kChunk && c0 + e < ncols; ++e)
        dst[e] = from_float<Tout>(src[e] + (accumulate ? to_float(dst[e]) : 0.0f));
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
// (the forward's w), else [k_red, n_out] (the input gradient's w). vec_*: see Operand / store_tile.
// Blocks run column tile fastest: the blocks resident at once cover a few row tiles (and their
// experts' weights) across all columns, so A and B are each read from DRAM about once.
template <bool kTransB, bool kAsync, class Tout>
__global__ void __launch_bounds__(kThreads, 2)
    grouped_rows_kernel(const dbf16* A, const dbf16* B, const int32_t* offsets, const int32_t* tile_starts, int experts,
                        long n_out, long k_red, Tout* C, bool accumulate, bool vec_a, bool vec_b, bool vec_c) {
  MOE_DYNAMIC_SHARED(unsigned char, smem);
  const int col_tiles = int((n_out + kBN - 1) / kBN);
  const int tile = int(blockIdx.x) / col_tiles;
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
  const long n0 = long(int(blockIdx.x) % col_tiles) * kBN;
  const dbf16* Be = B + long(e) * n_out * k_red;
  const int rows = clamp_extent(row_end - row0, kBM), cols = clamp_extent(n_out - n0, kBN);
  const Operand a{A + row0 * k_red, k_red, rows, k_red, vec_a};
  const Operand b = kTransB ? Operand{Be + n0 * k_red, k_red, cols, k_red, vec_b}
                            : Operand{Be + n0, n_out, cols, k_red, vec_b};
  Acc acc;
  mainloop<true, kTransB, kAsync>(smem, acc, int((k_red + kBK - 1) / kBK), a, b);
  store_tile(smem, acc, C + row0 * n_out + n0, n_out, rows, cols, accumulate, vec_c);
}

// dW_e[m0.., n0..] (+)= A_e^T B_e over the expert's rows: A [rows, M], B [rows, K], dW [E, M, K].
template <bool kAsync, class Tout>
__global__ void __launch_bounds__(kThreads, 2)
    grouped_weights_kernel(const dbf16* A, const dbf16* B, const int32_t* offsets, long M, long K, Tout* dW,
                           bool accumulate, bool vec_a, bool vec_b, bool vec_c) {
  MOE_DYNAMIC_SHARED(unsigned char, smem);
  const int e = blockIdx.y;
  const long tiles_n = (K + kBN - 1) / kBN;
  const long m0 = long(blockIdx.x / tiles_n) * kBM, n0 = long(blockIdx.x % tiles_n) * kBN;
  const long r_begin = offsets[e], r_len = offsets[e + 1] - r_begin;
  if (r_len == 0 && accumulate) return;  // nothing to add
  const int rows = clamp_extent(M - m0, kBM), cols = clamp_extent(K - n0, kBN);
  const Operand a{A + r_begin * M + m0, M, rows, r_len, vec_a};
  const Operand b{B + r_begin * K + n0, K, cols, r_len, vec_b};
  Acc acc;
  mainloop<false, false, kAsync>(smem, acc, int((r_len + kBK - 1) / kBK), a, b);
  store_tile(smem, acc, dW + long(e) * M * K + m0 * K + n0, K, rows, cols, accumulate, vec_c);
}

// 16-byte copies need the row stride and the base address to be multiples of 16 bytes.
template <class T>
bool vectorizable(const T* p, long ld) {
  return (ld * long(sizeof(T))) % 16 == 0 && reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

// Runs f(std::true_type) when both operands are vectorizable (the cp.async-only kernel), else
// f(std::false_type) (the kernel that picks per operand at run time).
template <class F>
void with_async(bool vec_a, bool vec_b, F f) {
  if (vec_a && vec_b)
    f(std::true_type{});
  else
    f(std::false_type{});
}

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
  const size_t blocks = size_t(ceil_div(rows, kBM) + unsigned(experts)) * ceil_div(n_out, kBN);
  MOE_CHECK(blocks < (size_t(1) << 31), kTransB ? "cuda::grouped_gemm_nt" : "cuda::grouped_gemm_nn", blocks,
            " tiles exceed the grid");
  const bool vec_a = vectorizable(A, k_red), vec_b = vectorizable(B, kTransB ? k_red : n_out);
  // MOE_GROUPED_GEMM=wgmma: Hopper's wgmma kernel (same row tiles) where its 16-byte copies apply.
  static_assert(kBM == kSm90TileRows, "both kernels number the same row tiles");
  if (vec_a && vec_b && grouped_gemm_uses_wgmma()) {
    grouped_rows_sm90<kTransB>(A, B, offsets, static_cast<const int32_t*>(tile_starts.get()), experts, rows, n_out,
                               k_red, C, accumulate, stream);
    return;
  }
  with_async(vec_a, vec_b, [&](auto async) {
    constexpr bool kAsync = decltype(async)::value;
    constexpr int bytes = Pipeline<true, kTransB>::smem_bytes;
    allow_dynamic_shared(kTransB ? "cuda::grouped_gemm_nt" : "cuda::grouped_gemm_nn",
                         grouped_rows_kernel<kTransB, kAsync, device_t<Tout>>, bytes);
    MOE_LAUNCH((grouped_rows_kernel<kTransB, kAsync, device_t<Tout>>), unsigned(blocks), kThreads, bytes, stream, dev(A),
               dev(B), offsets, static_cast<const int32_t*>(tile_starts.get()), experts, n_out, k_red, dev(C),
               accumulate, vec_a, vec_b, vectorizable(C, n_out));
  });
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
  const bool vec_a = vectorizable(dy, M), vec_b = vectorizable(x, K);
  if (vec_a && vec_b && grouped_gemm_uses_wgmma()) {
    grouped_gemm_tn_sm90(dy, x, offsets, experts, M, K, dw, accumulate, stream);
    return;
  }
  with_async(vec_a, vec_b, [&](auto async) {
    constexpr bool kAsync = decltype(async)::value;
    constexpr int bytes = Pipeline<false, false>::smem_bytes;
    allow_dynamic_shared("cuda::grouped_gemm_tn", grouped_weights_kernel<kAsync, device_t<Tout>>, bytes);
    MOE_LAUNCH((grouped_weights_kernel<kAsync, device_t<Tout>>), grid, kThreads, bytes, stream, dev(dy), dev(x),
               offsets, M, K, dev(dw), accumulate, vec_a, vec_b, vectorizable(dw, K));
  });
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
