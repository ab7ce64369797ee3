// MOE_GROUPED_GEMM=wgmma3: grouped_gemm.h's three forms on wgmma, as grouped_gemm_sm90.cu's kernels
// (the same swizzled operand layouts and per-slice products, grouped_gemm_sm90_tile.h) with two
// changes aimed at what the H100 measured there (0.41 - 0.53 of dense cuBLAS, 0.34 for tn with 8
// slices per tile):
//  * 128 x 256 output tiles, each warpgroup one m64n256k16 per k16 step (128 fp32 accumulators per
//    thread): per FLOP, 5/6 of the shared-memory reads and 3/4 of the global -> shared bytes of a
//    128 x 128 tile. A stage is 48 KiB (A 16, B 32); 4 stages (193 KiB, 1 block per SM), copies
//    issued 2 slices ahead.
//  * Persistent blocks (one per SM), each looping over the tiles it claims (Schedule: its own
//    first, then from a global counter), with one cp.async stream across tile boundaries: the
//    copies of the next tile's first slices are in flight while the current tile's last products
//    run and its accumulators are stored, so a tile pays no pipeline fill and no block launch (the
//    bubble that short reductions, tn's 8 slices at E = 64, paid per tile).
// The products run in one order of slices per block (tile by tile, slice by slice; every tile has
// at least one): slice g sits in stage g % 4, its copies form cp.async group g (the prologue's
// first 2 groups each followed by a barrier, which publishes Schedule's claims). At slice g each thread waits for its group g (all but the newest 1 of its g + 2), makes
// the stage visible to the async proxy, and the barrier publishes it; the barrier also tells that
// every warpgroup has retired slice g - 2's products (its wait_group 1 at slice g - 1, or the
// wait_group 0 closing a tile), so the copies of slice g + 2 issued after it may overwrite stage
// (g + 2) % 4 = (g - 2) % 4. After the barrier: slice g's products, then slice g + 2's copies
// (their tile lookups behind the tensor cores' work), then the wait for slice g - 1's products.
// The stores read only registers, so a tile boundary needs no barrier.
#include "core/cuda/caching_allocator.h"
#include "core/cuda/grouped_gemm_sm90_persistent.h"
#include "core/cuda/grouped_gemm_sm90_tile.h"
#include "core/cuda/launch.h"
#include "core/cuda/memory.h"
#include "core/cuda/wgmma.h"

#include <algorithm>

#ifndef MOE_CUDA_EMULATION
#include <cuda_runtime_api.h>
#endif

namespace moe::cuda {
// A named namespace rather than an anonymous one: the sm_80 pass compiles the kernel to a trap, and
// nvcc would warn about every device-only piece it then leaves unreferenced.
namespace sm90::wgmma3 {

// inline (external linkage): the sm_80 pass, whose kernel is a trap, leaves kAhead and kCopyUnroll
// unreferenced, which nvcc warns about for internal-linkage constants.
inline constexpr int kBN = 256, kStages = 4, kAhead = kStages - 2;
// Copies unrolled 2 at a time: fully unrolled, their hoisted addresses took the kernel from ~180
// registers to 254 (ptxas -v, sm_90a).
inline constexpr int kCopyUnroll = 2;
constexpr int kBTileBytes = kBN * kRowBytes;              // 32 KiB
constexpr int kStageBytes = kATileBytes + kBTileBytes;    // 48 KiB: A then B
constexpr int kSmemBytes = kStages * kStageBytes + kAlign;  // + slack to align the base
static_assert(kSmemBytes <= 227 * 1024, "sm_90's dynamic shared memory per block");

// One output tile's work: its operands, its 64-deep slices, where its (0, 0) lies in the output
// and how much of it exists (rows = 0: nothing to store).
struct Tile {
  Operand a, b;
  int slices;
  long out;
  int rows, cols;
};

// nt / nn: 128-row tiles of the rows grouped by expert (tile_starts, as grouped_gemm.cu's) times
// 256-column tiles, the column tile fastest: the blocks running at once share a few row tiles and
// their experts' weights. kTransB (nt): B_e is w_e [n_out, k_red] (K-major), else [k_red, n_out].
template <bool kTransB>
struct RowTiles {
  static constexpr bool kAMn = false, kBMn = !kTransB;
  const dbf16 *A, *B;
  const int32_t *offsets, *tile_starts;
  int experts, col_tiles;
  long n_out, k_red;

  __device__ int count() const { return tile_starts[experts] * col_tiles; }
  __device__ long ld() const { return n_out; }
  __device__ Tile at(int t) const {
    const RowTile r = row_tile<kBN>(offsets, tile_starts, experts, col_tiles, n_out, t);
    const dbf16* Be = B + long(r.e) * n_out * k_red;
    const Operand b =
        kTransB ? Operand{Be + r.n0 * k_red, k_red, r.cols, k_red} : Operand{Be + r.n0, n_out, r.cols, k_red};
    return Tile{Operand{A + r.row0 * k_red, k_red, r.rows, k_red}, b, int((k_red + kBK - 1) / kBK),
                r.row0 * n_out + r.n0, r.rows, r.cols};
  }
};

// tn: dW_e[m0.., n0..] (+)= A_e^T B_e over the expert's rows, A [rows, M], B [rows, K], dW [E, M, K],
// both operands MN-major; tiles expert by expert (the blocks running at once share its rows), 256
// columns fastest. An empty expert's tiles take one slice of zero-filled copies, so every tile has
// a slice (Schedule relies on it): zeros are written, or nothing when accumulating.
struct WeightTiles {
  static constexpr bool kAMn = true, kBMn = true;
  const dbf16 *A, *B;
  WeightTileSpace<kBN> space;  // the tiles' geometry, shared with wgmma4 (grouped_gemm_sm90_tile.h)

  __device__ int count() const { return space.count(); }
  __device__ long ld() const { return space.ld(); }
  __device__ Tile at(int t) const {
    const WeightTile w = space.tile(t);
    const int slices = w.r_len == 0 ? 1 : int((w.r_len + kBK - 1) / kBK);
    return Tile{Operand{A + w.r_begin * space.M + w.m0, space.M, w.rows, w.r_len},
                Operand{B + w.r_begin * space.K + w.n0, space.K, w.cols, w.r_len}, slices, w.out, w.rows, w.cols};
  }
};

// Which tiles a block runs, claimed at run time as the hardware hands tiles to blocks when each
// block is one tile (so Zipf-skewed tn, whose tiles cost their expert's rows, stays balanced):
// block b's tile 0 is b, its tile n + 1 is gridDim.x + atomicAdd(claims, 1). Thread 0 claims tile
// n + 1 when the copies start tile n, into claimed[(n + 1) % 4]. Every tile has a slice and the
// copies run 2 slices ahead, so a barrier comes between that write and its reads (the copies' at
// their next issue, the products' at the end of tile n), and the products are never more than 2
// tiles behind: the slot a claim overwrites (tile n - 3's) is read by no one any more.
struct Schedule {
  int* claims;   // global, zero at the launch
  int* claimed;  // shared [4]
  __device__ int tile(int n) const { return n == 0 ? int(blockIdx.x) : claimed[n % 4]; }
  __device__ void claim_after(int n) const {
    if (threadIdx.x == 0) claimed[(n + 1) % 4] = int(gridDim.x) + atomicAdd(claims, 1);
  }
};

// The copy side of the stream: the block's tiles' slices in the products' order, each into the
// next stage. issue() copies one slice (nothing once the block's tiles are done).
template <class Tiles>
struct SliceCopies {
  unsigned char* smem;
  int count, n = 0, slice = 0, stage = 0;  // n: the tile being copied, in the block's order
  Tile w{};

  __device__ void issue(const Tiles& tiles, const Schedule& schedule) {
    if (slice == 0) {  // tile n starts: published by a barrier since its claim
      const int t = schedule.tile(n);
      if (t >= count) return;
      w = tiles.at(t);
      schedule.claim_after(n);
    }
    unsigned char* at = smem + stage * kStageBytes;
    load_slice<Tiles::kAMn, kBM, kCopyUnroll>(w.a, slice, at);
    load_slice<Tiles::kBMn, kBN, kCopyUnroll>(w.b, slice, at + kATileBytes);
    stage = (stage + 1) % kStages;
    if (++slice == w.slices) {
      slice = 0;
      ++n;
    }
  }
};

template <class Tiles, class Tout>
__global__ void __launch_bounds__(kThreads, 1)
    persistent_wgmma_kernel(Tiles tiles, int* claims, Tout* C, bool accumulate, bool pair_c) {
#if MOE_WGMMA_AVAILABLE
  MOE_DYNAMIC_SHARED(unsigned char, smem_raw);
  MOE_SHARED(int, claimed, [4]);
  // The swizzle acts on absolute shared addresses: the stages start on a 1024-byte boundary.
  const uint32_t raw = wgmma::smem_address(smem_raw);
  unsigned char* smem = smem_raw + (kAlign - raw % kAlign) % kAlign;
  const uint32_t base = wgmma::smem_address(smem);
  const int count = tiles.count();
  if (int(blockIdx.x) >= count) return;  // nt / nn: the grid is sized by an upper bound on the tiles
  const Schedule schedule{claims, claimed};
  SliceCopies<Tiles> copies{smem, count};
  MOE_UNROLL
  for (int i = 0; i < kAhead; ++i) {
    copies.issue(tiles, schedule);
    cp_async_commit();
    __syncthreads();  // publishes the claim made by this issue to the next one
  }
  float acc[kBN / 2];
  int stage = 0;
  Tile w = tiles.at(int(blockIdx.x));
  for (int n = 0, t = int(blockIdx.x); t < count; ++n) {
    for (int s = 0; s < w.slices; ++s) {
      cp_async_wait<kAhead - 1>();
      wgmma::fence_proxy_async();
      __syncthreads();
      // The products first, then the copies (whose tile lookups may take a while) behind them.
      const uint32_t sa = base + uint32_t(stage * kStageBytes) + a_part();
      const uint32_t sb = base + uint32_t(stage * kStageBytes + kATileBytes);
      issue_slice_products<kBN, Tiles::kAMn, Tiles::kBMn>(acc, sa, sb, s > 0);
      copies.issue(tiles, schedule);
      cp_async_commit();
      retire_previous_slice(acc);
      stage = (stage + 1) % kStages;
    }
    // The next tile's lookups while the last products run, not after them (past the end: this
    // tile's, unused).
    const int t_next = schedule.tile(n + 1);
    const Tile next = tiles.at(t_next < count ? t_next : t);
    wgmma::wait_group<0>();
    wgmma::fence_operand(acc);
    store_tile(acc, C + w.out, tiles.ld(), w.rows, w.cols, accumulate, pair_c);
    w = next;
    t = t_next;
  }
  cp_async_wait<0>();  // only empty groups remain
#else
  __trap();  // launched only on sm_90 devices, which run the sm_90a code
#endif
}

// One block per SM, no more than there are tiles. The emulation takes 3 "SMs": it runs blocks one
// after another, so block 0 claims and streams through most tiles, crossing tile boundaries
// mid-stream as a GPU's blocks do.
int persistent_blocks(size_t tiles) {
#ifdef MOE_CUDA_EMULATION
  const int sms = 3;
#else
  int device = 0, sms = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
#endif
  return int(std::min(tiles, size_t(std::max(sms, 1))));
}

template <class Tiles, class Tout>
void launch_persistent(const char* op, const Tiles& tiles, size_t max_tiles, Tout* C, bool accumulate, long ld,
                       cudaStream_t stream) {
  MOE_CHECK(max_tiles < (size_t(1) << 31), op, max_tiles, " tiles exceed the int tile index");
  Workspace<int> claims{1};
  device_memset_async(claims.get(), 0, sizeof(int), stream);
  allow_dynamic_shared(op, persistent_wgmma_kernel<Tiles, device_t<Tout>>, kSmemBytes);
  MOE_LAUNCH((persistent_wgmma_kernel<Tiles, device_t<Tout>>), unsigned(persistent_blocks(max_tiles)), kThreads,
             kSmemBytes, stream, tiles, claims.get(), dev(C), accumulate, pair_stores(C, ld));
}

}  // namespace sm90::wgmma3

using namespace sm90;
using namespace sm90::wgmma3;

template <bool kTransB, class Tout>
void grouped_rows_sm90_persistent(const bf16* A, const bf16* B, const int32_t* offsets, const int32_t* tile_starts,
                                  int experts, long rows, long n_out, long k_red, Tout* C, bool accumulate,
                                  cudaStream_t stream) {
  if (rows == 0) return;
  const int col_tiles = int(ceil_div(n_out, kBN));
  // Each expert's partial last tile adds at most one tile to rows / kBM.
  const size_t max_tiles = size_t(ceil_div(rows, kBM) + unsigned(experts)) * col_tiles;
  const RowTiles<kTransB> tiles{dev(A), dev(B), offsets, tile_starts, experts, col_tiles, n_out, k_red};
  launch_persistent(kTransB ? "cuda::grouped_gemm_nt (wgmma3)" : "cuda::grouped_gemm_nn (wgmma3)", tiles, max_tiles,
                    C, accumulate, n_out, stream);
}

template <class Tout>
void grouped_gemm_tn_sm90_persistent(const bf16* dy, const bf16* x, const int32_t* offsets, int experts, long M,
                                     long K, Tout* dw, bool accumulate, cudaStream_t stream) {
  const int tiles_n = int(ceil_div(K, kBN)), tiles_mn = int(ceil_div(M, kBM)) * tiles_n;
  const WeightTiles tiles{dev(dy), dev(x), {offsets, experts, tiles_n, tiles_mn, M, K, accumulate}};
  launch_persistent("cuda::grouped_gemm_tn (wgmma3)", tiles, size_t(tiles_mn) * size_t(experts), dw, accumulate, K,
                    stream);
}

#define MOE_INSTANTIATE(T)                                                                                  \
  template void grouped_rows_sm90_persistent<true, T>(const bf16*, const bf16*, const int32_t*,            \
                                                      const int32_t*, int, long, long, long, T*, bool,     \
                                                      cudaStream_t);                                       \
  template void grouped_rows_sm90_persistent<false, T>(const bf16*, const bf16*, const int32_t*,           \
                                                       const int32_t*, int, long, long, long, T*, bool,    \
                                                       cudaStream_t);                                      \
  template void grouped_gemm_tn_sm90_persistent<T>(const bf16*, const bf16*, const int32_t*, int, long, long, \
                                                   T*, bool, cudaStream_t);
MOE_INSTANTIATE(float)
MOE_INSTANTIATE(bf16)
#undef MOE_INSTANTIATE

}  // namespace moe::cuda
