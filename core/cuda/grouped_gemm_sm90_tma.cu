// MOE_GROUPED_GEMM=wgmma4: grouped_gemm.h's three forms on wgmma fed by TMA, warp-specialized
// (CUTLASS's sm90 "TMA warp-specialized cooperative" design; wgmma5 its "pingpong" variant, see
// Geometry below). The cp.async kernels
// (grouped_gemm_sm90.cu, grouped_gemm_sm90_persistent.cu) measured 0.34 - 0.49 of a dense cuBLAS
// GEMM on an H100: their copies are issued by the threads that also issue the products, so every
// slice costs those warps 16-48 copy instructions, their address arithmetic and a block-wide
// barrier. Here one thread issues each slice's copies as 1-6 bulk tensor copies (TMA) that complete
// on an mbarrier, and the products' warpgroups only wait on barriers:
//  * 384 threads: warpgroup 0 the producer (registers lowered to 40; one elected thread claims
//    tiles and issues the copies), warpgroups 1 and 2 the consumers (registers raised to 232), each
//    owning 64 rows of a 128 x 256 output tile: one m64n256k16 per k16 step, 128 fp32 accumulators.
//  * 4 stages of 64-deep reduction slices, A 128 x 64 (16 KiB) + B 256 x 64 (32 KiB): full[s]
//    completes when the producer's arrival and the stage's 48 KiB of copies have landed; empty[s]
//    when each of the 8 consumer warps has retired the products that read stage s (wgmma
//    wait_group 1 of the NEXT slice, or the tile's closing wait_group 0), and only then does the
//    producer copy into it again.
//  * Persistent blocks (one per SM) claim tiles as wgmma3's do (block b's first tile is b, then
//    gridDim.x + atomicAdd), the producer only: it publishes each tile's description in a ring of
//    kSlots slots (sched_full / sched_empty barriers), the past-the-end claim as a sentinel that
//    ends the consumers. So the consumers never look a tile up, and the producer copies the next
//    tile's first slices while the consumers store the current one.
//  * The epilogue: each consumer warp passes its 16 rows through 4 KiB of shared staging (the 32
//    KiB left beside the stages), so the global stores (and the accumulate loads) are whole
//    16-byte vectors, 16 lanes per row, where store_tile's direct stores touch 8 rows x 16 or 32
//    bytes per access (those remain for outputs without 16-byte rows, and under
//    MOE_WGMMA4_DIRECT_STORES=1 to compare the two on a GPU). Under MOE_WGMMA4_TMA_STORES=1 an
//    overwrite goes out as bulk tensor stores instead (store_rows_tma: two 2 KiB boxes per warp in
//    turn, the tile's last stores left running while the next tile's products start), meant for tn
//    at 512 rows per expert, where each tile's 8 slices of products are followed by 128 KiB of
//    fp32 stores the consumers otherwise wait on. Opt-in: an H100 measured it no faster for wgmma4
//    (2026-11-27; that case is bound by the memory's mixed read / write rate, docs/benchmarks.md).
// The copies land in exactly the 128B-swizzled layouts the cp.async kernels build (K-major
// [rows][64] tiles of 128-byte rows; MN-major [64 k][64 o] blocks; grouped_gemm_sm90.cu), so the
// descriptors and per-slice products are grouped_gemm_sm90_tile.h's. Per form:
//  nt  A = x [R][K] (2D, one [128][64] box), B = w [E][M][K] (3D, one [1][256][64] box): the
//      expert index is a coordinate, so an expert's column tail and K tail read as zeros.
//  nn  A = dy [R][M] (2D, [128][64]), B = w [E][M][K] MN-major (3D, four [1][64 m][64 k] boxes).
//  tn  A = dy [R][M], B = x [R][K], both MN-major (2D, two and four [64 r][64] boxes) over the
//      expert's rows [offsets[e], offsets[e + 1]). A partial last slice of v < 64 rows is loaded
//      ending at the expert's last row (rows end - 64 .. end - 1; rows before 0 read as zeros), and
//      the consumers zero its first 64 - v rows in shared memory before the products (a named
//      barrier among the consumers, fence.proxy.async): those rows are the expert's previous
//      slice's or the previous expert's. Ending the box at the expert's end, not starting it at
//      the slice, keeps every copy inside [0, R) without knowing R (grouped_gemm_tn_sm90 is not
//      told it), so the maps' row extent is only a bound; zeroing rather than manual copies keeps
//      the producer one thread and the stage's byte count fixed.
// nt / nn row tiles run past an expert's rows into the next expert's: computed, never stored
// (store_tile clamps rows); rows past R read as zeros.
#include "core/cuda/caching_allocator.h"
#include "core/cuda/env_switch.h"
#include "core/cuda/grouped_gemm_sm90_tile.h"
#include "core/cuda/grouped_gemm_sm90_tma.h"
#include "core/cuda/launch.h"
#include "core/cuda/memory.h"
#include "core/cuda/tensor_map.h"
#include "core/cuda/tma.h"
#include "core/cuda/wgmma.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#ifndef MOE_CUDA_EMULATION
#include <cuda_runtime_api.h>
#endif

namespace moe::cuda {
// A named namespace (as wgmma3's): the sm_80 pass compiles the kernel to a trap, and nvcc warns
// about the device-only pieces it then leaves unreferenced in an anonymous one.
namespace sm90::wgmma4 {

// The two ways the consumer warpgroups share the work (MOE_GROUPED_GEMM = wgmma4 / wgmma5):
//  cooperative (wgmma4): both on one 128 x 256 tile, 64 rows each (one m64n256k16 per k16 step);
//    4 stages of 48 KiB; a stage is read by all 8 consumer warps.
//  pingpong (wgmma5): each warpgroup a whole 128 x 128 tile, the even tiles of the block's stream
//    to warpgroup 0 and the odd ones to warpgroup 1 (two m64n128k16 per k16 step: rows 0-63 and
//    64-127 into two 64-register halves); 6 stages of 32 KiB; a stage is read by one warpgroup's 4
//    warps. The producer fills the stages in stream order, so one warpgroup's products run while
//    the other stores its tile: the epilogue no longer idles the tensor cores (at 4/3 the copied
//    bytes per FLOP of the 128 x 256 tile).
template <bool kPingpong>
struct Geometry {
  static constexpr bool kPing = kPingpong;
  static constexpr int kBN = kPingpong ? 128 : 256;
  static constexpr int kStages = kPingpong ? 6 : 4;
  static constexpr int kStageBytes = kATileBytes + kBN * kRowBytes;  // A then B: 32 or 48 KiB
  static constexpr int kStageWarps = kPingpong ? 4 : 8;              // the empty barriers' arrivals
};

inline constexpr int kMaxStages = 6, kSlots = 4;
inline constexpr int kBlockThreads = 384, kConsumerThreads = 256, kConsumerWarps = kConsumerThreads / 32;
inline constexpr int kProducerRegs = 40, kConsumerRegs = 232;  // 40 x 128 + 232 x 256 <= 64 Ki
// Named barriers (0 is __syncthreads'): 1 orders the cooperative consumers' zeroing of a tn tail
// before their products, 1 + warpgroup a pingpong warpgroup's.
inline constexpr int kTailBarrier = 1;

// What the consumers need of a tile: where its (0, 0) lies in the output, how much of it exists
// (rows = 0: nothing to store), its slices (-1: no more tiles) and, for tn, the rows of its last
// slice that are the expert's (64: all; fewer: the first 64 - tail are zeroed).
struct TileInfo {
  long out;
  int slices, rows, cols, tail;
};
// The producer's view: the tile plus its copies' coordinates.
struct Work {
  TileInfo info;
  int row0, n0, m0, e;
};

// The block's barriers and tile ring, after the stages and the staging in dynamic shared memory
// (mbarriers must be 8-byte aligned shared memory; the emulation's wgmma addresses only the
// dynamic part).
struct Control {
  uint64_t full[kMaxStages], empty[kMaxStages], sched_full[kSlots], sched_empty[kSlots];
  TileInfo slot[kSlots];
};
constexpr int kControlBytes = (int(sizeof(Control)) + 15) / 16 * 16;
// The epilogue's staging, after the stages (so 1024-byte aligned, as the TMA stores' 128B swizzle
// needs): per consumer warp 16 rows of 256 bytes (a pass of 64 fp32 or 128 bf16 columns of 16 of
// the warp's output rows), or, for the TMA stores, two 2 KiB boxes of 16 rows x 128 bytes.
constexpr int kEpiRowBytes = 256, kEpiWarpBytes = 16 * kEpiRowBytes, kStoreBoxBytes = kEpiWarpBytes / 2;
constexpr int kStagesBytes = 4 * 48 * 1024;  // both geometries' stages
static_assert(Geometry<false>::kStages * Geometry<false>::kStageBytes == kStagesBytes &&
                  Geometry<true>::kStages * Geometry<true>::kStageBytes == kStagesBytes,
              "one shared-memory layout");
// + slack to align the base
constexpr int kStagingBytes = kConsumerWarps * kEpiWarpBytes;
constexpr int kSmemBytes = kAlign + kStagesBytes + kStagingBytes + kControlBytes;
static_assert(kStagesBytes % kAlign == 0 && kEpiWarpBytes % kAlign == 0 && kStoreBoxBytes % kAlign == 0,
              "TMA store boxes on 1024-byte boundaries");
static_assert(kSmemBytes <= 227 * 1024, "sm_90's dynamic shared memory per block");

// nt / nn: 128-row tiles of the rows grouped by expert (tile_starts) times kBN-column tiles, the
// column tile fastest. kTransB (nt): B_e is w_e [n_out][k_red] (K-major), else [k_red][n_out].
template <bool kTransB, int kBN>
struct RowTiles {
  static constexpr bool kAMn = false, kBMn = !kTransB, kTail = false;
  const int32_t *offsets, *tile_starts;
  int experts, col_tiles;
  long n_out, k_red;

  __device__ int count() const { return tile_starts[experts] * col_tiles; }
  __device__ long ld() const { return n_out; }
  __device__ Work at(int t) const {
    const RowTile r = row_tile<kBN>(offsets, tile_starts, experts, col_tiles, n_out, t);
    return Work{{r.row0 * n_out + r.n0, int((k_red + kBK - 1) / kBK), r.rows, r.cols, kBK}, int(r.row0), int(r.n0), 0,
                r.e};
  }
  // Slice s's copies into `stage`, completing on `bar`.
  __device__ void load(unsigned char* stage, const TensorMap* map_a, const TensorMap* map_b, uint64_t* bar,
                       const Work& w, int s) const {
    const int k0 = s * kBK;
    tma::load_2d(stage, map_a, bar, k0, w.row0);
    if constexpr (kTransB) {
      tma::load_3d(stage + kATileBytes, map_b, bar, k0, w.n0, w.e);
    } else {
      MOE_UNROLL
      for (int j = 0; j < kBN / 64; ++j)
        tma::load_3d(stage + kATileBytes + j * kHalfBytes, map_b, bar, w.n0 + 64 * j, k0, w.e);
    }
  }
};

// tn: dW_e[m0.., n0..] (+)= A_e^T B_e over the expert's rows, A [R][M], B [R][K], dW [E][M][K],
// both MN-major; tiles expert by expert, kBN columns fastest. An empty expert's tiles have no
// slices: zeros are stored, or nothing when accumulating.
template <int kBN>
struct WeightTiles : WeightTileSpace<kBN> {
  static constexpr bool kAMn = true, kBMn = true, kTail = true;

  __device__ Work at(int t) const {
    const WeightTile w = this->tile(t);
    const int slices = int((w.r_len + kBK - 1) / kBK), tail = int(w.r_len) - (slices - 1) * kBK;
    return Work{{w.out, slices, w.rows, w.cols, tail}, int(w.r_begin), int(w.n0), int(w.m0), w.e};
  }
  __device__ void load(unsigned char* stage, const TensorMap* map_a, const TensorMap* map_b, uint64_t* bar,
                       const Work& w, int s) const {
    // The last slice ends at the expert's last row (see the header comment).
    const int r = s == w.info.slices - 1 ? w.row0 + (w.info.slices - 1) * kBK + w.info.tail - kBK : w.row0 + s * kBK;
    MOE_UNROLL
    for (int j = 0; j < kBM / 64; ++j) tma::load_2d(stage + j * kHalfBytes, map_a, bar, w.m0 + 64 * j, r);
    MOE_UNROLL
    for (int j = 0; j < kBN / 64; ++j) tma::load_2d(stage + kATileBytes + j * kHalfBytes, map_b, bar, w.n0 + 64 * j, r);
  }
};

// The elected producer thread: claims tiles, publishes each in the ring, and copies its slices into
// the stages in turn (fill counts the slices copied by the block so far: stage fill % kStages, its
// use fill / kStages). The next tile is claimed when a tile starts and looked up once the ring is
// full of this tile's slices (or at once if it has fewer), where the thread would wait on an
// "empty" barrier anyway: the lookups' global loads then delay no copy the consumers wait for.
template <class Tiles>
__device__ Work work_at(const Tiles& tiles, int count, int t) {
  Work w{};
  w.info.slices = -1;  // past the end: the sentinel that ends the consumers
  if (t < count) w = tiles.at(t);
  return w;
}
template <class G, class Tiles>
__device__ void produce(const Tiles& tiles, const TensorMap* map_a, const TensorMap* map_b, int* claims,
                        unsigned char* stages, Control& ctl) {
  tma::prefetch_tensor_map(map_a);
  tma::prefetch_tensor_map(map_b);
  const int count = tiles.count();
  Work w = work_at(tiles, count, int(blockIdx.x));
  for (int n = 0, fill = 0;; ++n) {
    const int slot = n % kSlots;
    if (n >= kSlots) tma::mbar_wait(&ctl.sched_empty[slot], unsigned(n / kSlots - 1) & 1u);
    ctl.slot[slot] = w.info;
    tma::mbar_arrive(&ctl.sched_full[slot]);  // releases the slot's write
    if (w.info.slices < 0) return;
    const int next = int(gridDim.x) + atomicAdd(claims, 1);
    const int lookup_after = (w.info.slices < G::kStages ? w.info.slices : G::kStages) - 1;  // -1: no slices
    Work next_w{};
    if (lookup_after < 0) next_w = work_at(tiles, count, next);
    for (int s = 0; s < w.info.slices; ++s, ++fill) {
      const int stage = fill % G::kStages;
      if (fill >= G::kStages) tma::mbar_wait(&ctl.empty[stage], unsigned(fill / G::kStages - 1) & 1u);
      tma::mbar_arrive_expect_tx(&ctl.full[stage], G::kStageBytes);  // out-of-range parts count too
      tiles.load(stages + stage * G::kStageBytes, map_a, map_b, &ctl.full[stage], w, s);
      if (s == lookup_after) next_w = work_at(tiles, count, next);
    }
    w = next_w;
  }
}

// One arrival per consumer warp, once all its lanes are past the point (their wgmma wait_group, or
// their read of a slot).
__device__ __forceinline__ void warp_arrive(uint64_t* bar) {
  __syncwarp();
  if (threadIdx.x % 32 == 0) tma::mbar_arrive(bar);
}

// tn's partial last slice: zero rows [0, 64 - valid) of its [64 k][64 o] blocks (2 of A, kBN / 64
// of B; one 128-byte row each, whatever the swizzle did within it), then hand them to the async
// proxy and to the other threads reading the stage (`threads` from consumer thread `first`).
template <class G>
__device__ __forceinline__ void zero_leading_rows(unsigned char* stage, int valid, int first, int threads,
                                                  int barrier) {
  struct alignas(16) Chunk {
    uint32_t v[4];
  };
  const int per_block = (kBK - valid) * (kRowBytes / 16);
  for (int i = int(threadIdx.x) - first; i < (G::kStageBytes / kHalfBytes) * per_block; i += threads) {
    const int block = i / per_block, c = i % per_block;
    *reinterpret_cast<Chunk*>(stage + block * kHalfBytes + (c / 8) * kRowBytes + (c % 8) * 16) = Chunk{};
  }
  wgmma::fence_proxy_async();
  tma::named_barrier_sync(barrier, threads);
}

// The byte offset of 16-byte chunk c of staged row r: the chunk index XOR r % 8, so both the
// fragment writes (8 rows x 4 column pairs per access) and the row reads spread over the banks.
__device__ __forceinline__ int staged_at(int r, int c) { return r * kEpiRowBytes + (c ^ (r % 8)) * 16; }

// The byte of 16-byte chunk c (0 .. 7) of row r in a TMA store box: the 128B swizzle (chunk c ^ r % 8),
// which also spreads the fragment writes over the banks as staged_at does.
__device__ __forceinline__ int box_at(int r, int c) { return r * 128 + (c ^ (r % 8)) * 16; }

// Writes the lane's accumulator pairs of kWidth columns from column group j0 (8 columns per group;
// by the accumulator map, registers 4 j, 4 j + 1 hold row lane / 4, columns 8 j + 2 (lane % 4) +
// 0, 1, and 4 j + 2, 4 j + 3 the same 8 rows down) into the staging as Tout: chunk c of row r at
// staged_at(r, c) (kBox false: 256-byte rows) or box_at(r, c) (a TMA store box of 128-byte rows).
template <int kWidth, bool kBox, class Tout, int kN>
__device__ __forceinline__ void stage_fragments(const float (&acc)[kN], int j0, unsigned char* staging) {
  struct alignas(2 * sizeof(Tout)) Pair {
    Tout v[2];
  };
  const int lane = int(threadIdx.x) % 32, g = lane / 4, q = lane % 4;
  MOE_UNROLL
  for (int jj = 0; jj < kWidth / 8; ++jj) {
    const int j = j0 + jj, byte = (8 * jj + 2 * q) * int(sizeof(Tout));
    MOE_UNROLL
    for (int h = 0; h < 2; ++h) {
      const Pair p{{from_float<Tout>(acc[4 * j + 2 * h]), from_float<Tout>(acc[4 * j + 2 * h + 1])}};
      const int r = g + 8 * h;
      *reinterpret_cast<Pair*>(staging + (kBox ? box_at(r, byte / 16) : staged_at(r, byte / 16)) + byte % 16) = p;
    }
  }
}

// A warp's 16 rows x kCols accumulators (an m64nN fragment's share: by the accumulator map,
// wgmma.h, registers 4 j, 4 j + 1 hold row lane / 4, columns 8 j + 2 (lane % 4) + 0, 1, and
// 4 j + 2, 4 j + 3 the same 8 rows down) to tile rows row0 .. row0 + 15 in global memory, through
// the warp's staging, for an output whose rows allow 16-byte accesses (base 16-byte aligned, ld
// and the valid columns multiples of 16 / sizeof(Tout)): per pass each lane writes its column
// pairs of the pass into the staging, then the warp reads it back a 16-byte chunk per lane and
// stores (adds to) whole 16-byte vectors, 16 lanes per row, instead of store_tile's 8 rows x 16 or
// 32 bytes per access.
template <int kCols, class Tout>
__device__ __forceinline__ void store_rows_staged(const float (&acc)[kCols / 2], unsigned char* staging, Tout* out,
                                                  long ld, int row0, int nrows, int ncols, bool accumulate) {
  constexpr int kVec = 16 / int(sizeof(Tout)), kPassCols = kEpiRowBytes / int(sizeof(Tout));
  static_assert(kCols % kPassCols == 0, "whole passes");
  struct alignas(16) Vec {
    Tout v[kVec];
  };
  const int lane = int(threadIdx.x) % 32;
  MOE_UNROLL
  for (int pass = 0; pass < kCols / kPassCols; ++pass) {
    stage_fragments<kPassCols, false, Tout>(acc, pass * (kPassCols / 8), staging);
    __syncwarp();
    for (int i = 0; i < 8; ++i) {
      const int r = 2 * i + lane / 16, c = lane % 16, col = pass * kPassCols + c * kVec;
      if (row0 + r >= nrows || col >= ncols) continue;  // ncols is a multiple of kVec: whole vectors
      Vec v = *reinterpret_cast<const Vec*>(staging + staged_at(r, c));
      Vec* dst = reinterpret_cast<Vec*>(out + long(row0 + r) * ld + col);
      if (accumulate) {
        const Vec old = *dst;
        MOE_UNROLL
        for (int e = 0; e < kVec; ++e) v.v[e] = from_float<Tout>(to_float(v.v[e]) + to_float(old.v[e]));
      }
      *dst = v;
    }
    __syncwarp();  // the next pass overwrites the staging
  }
}

// What a consumer warp's stores need besides the accumulators: its staging, the output's kind of
// access (accumulate: add to it; vec: 16-byte rows, stored through the staging; pair: 2-element
// stores) and, for the TMA stores (the kernel's kTma: bulk tensor stores of map), the boxes it has
// staged so far (box n uses half n % 2 of the staging).
struct Epilogue {
  unsigned char* staging;
  const TensorMap* map;
  bool accumulate, pair, vec;
  int boxes;
};

// store_rows_staged for an overwrite through bulk tensor stores (MOE_WGMMA4_TMA_STORES=1): the
// warp's 16 rows go out in boxes of 16 rows x 128 bytes (32 fp32 or 64 bf16 columns), staged in the
// two halves of the warp's staging in turn. Per box: lane 0 waits until the store that last used
// this half has read it (wait_group.read 1: the other half's store may still run), the lanes write
// their fragments, fence them to the async proxy, and lane 0 stores the box at tile (row, col) +
// (row0, box columns) and commits it. Nothing waits for the tile's last stores: the next tile's
// products overlap them (the consumer waits for all before it exits). The map clips the columns at
// the output's width (= ld); rows it cannot clip (an nt / nn tile runs into the next expert's rows,
// a tn tile into the next expert's matrix): a warp whose 16 rows are not all the tile's stores the
// valid ones from the staging itself, after waiting for all its stores (wait_group.read 0: the
// newest may be in this half when the previous tile's last box was a bulk store).
template <int kCols, class Tout>
__device__ __forceinline__ void store_rows_tma(const float (&acc)[kCols / 2], Epilogue& ep, Tout* out, long ld,
                                               int tile_row, int tile_col, int row0, int nrows, int ncols) {
  constexpr int kVec = 16 / int(sizeof(Tout)), kBoxCols = 128 / int(sizeof(Tout));
  static_assert(kCols % kBoxCols == 0, "whole boxes");
  struct alignas(16) Vec {
    Tout v[kVec];
  };
  if (row0 >= nrows) return;
  const bool whole = row0 + 16 <= nrows;
  const int lane = int(threadIdx.x) % 32;
  MOE_UNROLL
  for (int box = 0; box < kCols / kBoxCols; ++box) {
    if (box * kBoxCols >= ncols) break;
    unsigned char* half = ep.staging + (ep.boxes++ % 2) * kStoreBoxBytes;
    if (lane == 0) {
      if (whole)
        tma::bulk_wait_group_read<1>();
      else
        tma::bulk_wait_group_read<0>();
    }
    __syncwarp();
    stage_fragments<kBoxCols, true, Tout>(acc, box * (kBoxCols / 8), half);
    if (whole) {
      tma::fence_proxy_async_shared();  // each lane's writes, before lane 0's store reads them
      __syncwarp();
      if (lane == 0) {
        tma::store_2d(ep.map, half, tile_col + box * kBoxCols, tile_row + row0);
        tma::bulk_commit_group();
      }
    } else {
      __syncwarp();
      for (int i = 0; i < 4; ++i) {  // 16 rows x 8 chunks, 8 lanes per row
        const int r = 4 * i + lane / 8, c = lane % 8, col = box * kBoxCols + c * kVec;
        if (row0 + r >= nrows || col >= ncols) continue;
        *reinterpret_cast<Vec*>(out + long(row0 + r) * ld + col) = *reinterpret_cast<const Vec*>(half + box_at(r, c));
      }
    }
  }
}

// The 128 accumulators of a consumer thread. Cooperative: warpgroup wg's 64 x 256 part of the tile
// (m64n256k16).
template <class G>
struct Accumulators {
  float acc[128];
  __device__ __forceinline__ void zero() {
    for (float& v : acc) v = 0.0f;
  }
  // One slice's products (the first overwrites when !accumulate) as one group; sa: the A tile.
  template <bool kAMn, bool kBMn>
  __device__ __forceinline__ void issue(uint32_t sa, uint32_t sb, bool accumulate, int wg) {
    issue_slice_products<256, kAMn, kBMn>(acc, sa + uint32_t(wg * (kATileBytes / 2)), sb, accumulate);
  }
  template <int kPending>
  __device__ __forceinline__ void wait() {
    wgmma::wait_group<kPending>();
    wgmma::fence_operand(acc);
  }
  // The tile's rows [0, nrows) x columns [0, ncols) to out (row stride ld), which is the output's
  // element (tile_row, tile_col).
  template <bool kTma, class Tout>
  __device__ __forceinline__ void store(Epilogue& ep, Tout* out, long ld, int tile_row, int tile_col, int nrows,
                                        int ncols, int wg) {
    const int row0 = 64 * wg + int(threadIdx.x) / 32 % 4 * 16;
    if constexpr (kTma)
      store_rows_tma<256>(acc, ep, out, ld, tile_row, tile_col, row0, nrows, ncols);
    else if (ep.vec)
      store_rows_staged<256>(acc, ep.staging, out, ld, row0, nrows, ncols, ep.accumulate);
    else
      store_tile(acc, out, ld, nrows, ncols, ep.accumulate, ep.pair, wg);
  }
};
// Pingpong: the warpgroup's whole 128 x 128 tile, rows 0-63 in lo and 64-127 in hi, each an
// m64n128k16 accumulator (two arrays: one array viewed in halves went to local memory).
template <>
struct Accumulators<Geometry<true>> {
  float lo[64], hi[64];
  __device__ __forceinline__ void zero() {
    for (float& v : lo) v = 0.0f;
    for (float& v : hi) v = 0.0f;
  }
  template <bool kAMn, bool kBMn>
  __device__ __forceinline__ void issue(uint32_t sa, uint32_t sb, bool accumulate, int) {
    wgmma::fence_operand(lo);
    wgmma::fence_operand(hi);
    wgmma::fence();
    MOE_UNROLL
    for (int ks = 0; ks < kBK / 16; ++ks) {
      const uint64_t db = slice_desc<kBMn>(sb, ks);
      wgmma::mma_async<128, kAMn, kBMn>(lo, slice_desc<kAMn>(sa, ks), db, accumulate || ks > 0);
      wgmma::mma_async<128, kAMn, kBMn>(hi, slice_desc<kAMn>(sa + kATileBytes / 2, ks), db, accumulate || ks > 0);
    }
    wgmma::commit_group();
  }
  template <int kPending>
  __device__ __forceinline__ void wait() {
    wgmma::wait_group<kPending>();
    wgmma::fence_operand(lo);
    wgmma::fence_operand(hi);
  }
  template <bool kTma, class Tout>
  __device__ __forceinline__ void store(Epilogue& ep, Tout* out, long ld, int tile_row, int tile_col, int nrows,
                                        int ncols, int) {
    const int warp_rows = int(threadIdx.x) / 32 % 4 * 16;  // the warp's 16 of each 64 rows
    if constexpr (kTma) {
      store_rows_tma<128>(lo, ep, out, ld, tile_row, tile_col, warp_rows, nrows, ncols);
      store_rows_tma<128>(hi, ep, out, ld, tile_row, tile_col, 64 + warp_rows, nrows, ncols);
    } else if (ep.vec) {
      store_rows_staged<128>(lo, ep.staging, out, ld, warp_rows, nrows, ncols, ep.accumulate);
      store_rows_staged<128>(hi, ep.staging, out, ld, 64 + warp_rows, nrows, ncols, ep.accumulate);
    } else {
      store_tile(lo, out, ld, nrows, ncols, ep.accumulate, ep.pair, 0);
      store_tile(hi, out, ld, nrows, ncols, ep.accumulate, ep.pair, 1);
    }
  }
};

// A consumer warpgroup (wg 0 or 1): per tile of the ring it takes (cooperative: all; pingpong:
// n % 2 == wg), its slices' products as they land, each stage released once the products reading
// it retired, then the store; a pingpong warpgroup steps over the other's tiles' slices.
template <class G, bool kTma, class Tiles, class Tout>
__device__ void consume(const Tiles& tiles, unsigned char* stages, Control& ctl, Tout* C, Epilogue ep) {
  const int wg = int(threadIdx.x) / 128 - 1;
  const uint32_t base = wgmma::smem_address(stages);
  Accumulators<G> a;
  int fill = 0;
  for (int n = 0;; ++n) {
    const int slot = n % kSlots;
    tma::mbar_wait(&ctl.sched_full[slot], unsigned(n / kSlots) & 1u);
    const int slices = ctl.slot[slot].slices;
    if (slices < 0) {
      if constexpr (kTma)
        if (threadIdx.x % 32 == 0) tma::bulk_wait_group<0>();  // the staging outlives the stores
      return;
    }
    if (G::kPing && n % 2 != wg) {  // the other warpgroup's tile
      fill += slices;
      warp_arrive(&ctl.sched_empty[slot]);
      continue;
    }
    // Zeros for a tile without slices (tn's empty experts). Set on every tile: zeroing only on that
    // branch made the compiler keep a second copy of the accumulators (255 registers and spills).
    a.zero();
    for (int s = 0; s < slices; ++s) {
      const int stage = (fill + s) % G::kStages;
      unsigned char* at = stages + stage * G::kStageBytes;
      tma::mbar_wait(&ctl.full[stage], unsigned((fill + s) / G::kStages) & 1u);
      if constexpr (Tiles::kTail) {
        const int tail = ctl.slot[slot].tail;
        if (s == slices - 1 && tail < kBK) {
          if constexpr (G::kPing) {  // the barrier id spelled out per warpgroup: an immediate, not a register
            if (wg == 0)
              zero_leading_rows<G>(at, tail, 128, 128, kTailBarrier);
            else
              zero_leading_rows<G>(at, tail, 256, 128, kTailBarrier + 1);
          } else {
            zero_leading_rows<G>(at, tail, 128, kConsumerThreads, kTailBarrier);
          }
        }
      }
      const uint32_t sa = base + uint32_t(stage * G::kStageBytes);
      a.template issue<Tiles::kAMn, Tiles::kBMn>(sa, sa + kATileBytes, s > 0, wg);
      a.template wait<1>();  // the previous slice's products retired: release its stage
      if (s > 0) warp_arrive(&ctl.empty[(fill + s - 1) % G::kStages]);
    }
    a.template wait<0>();
    if (slices > 0) {
      fill += slices;
      warp_arrive(&ctl.empty[(fill - 1) % G::kStages]);
    }
    // The rest of the tile's description read only now (the asm above clobbers memory, so it is
    // read again rather than held in registers beside the accumulators); the slot is released after.
    const TileInfo w = ctl.slot[slot];
    warp_arrive(&ctl.sched_empty[slot]);
    const long ld = tiles.ld();
    a.template store<kTma>(ep, C + w.out, ld, int(w.out / ld), int(w.out % ld), w.rows, w.cols, wg);
  }
}

// kTma: the epilogue by TMA stores (store_rows_tma) only, a separate instantiation so that the
// default one's registers are what they were without it (both paths in one kernel spilled).
template <class G, class Tiles, class Tout, bool kTma>
__global__ void __launch_bounds__(kBlockThreads, 1)
    tma_wgmma_kernel(const __grid_constant__ TensorMap map_a, const __grid_constant__ TensorMap map_b,
                     const __grid_constant__ TensorMap map_c, Tiles tiles, int* claims, Tout* C, bool accumulate,
                     bool pair_c, bool vec_c) {
#if MOE_WGMMA_AVAILABLE
  MOE_DYNAMIC_SHARED(unsigned char, smem_raw);
  // The swizzle acts on absolute shared addresses: the stages start on a 1024-byte boundary.
  const uint32_t raw = wgmma::smem_address(smem_raw);
  unsigned char* stages = smem_raw + (kAlign - raw % kAlign) % kAlign;
  unsigned char* staging = stages + kStagesBytes;
  Control& ctl = *reinterpret_cast<Control*>(staging + kStagingBytes);
  if (threadIdx.x == 0) {
    for (int s = 0; s < G::kStages; ++s) {
      tma::mbar_init(&ctl.full[s], 1);
      tma::mbar_init(&ctl.empty[s], G::kStageWarps);
    }
    for (int s = 0; s < kSlots; ++s) {
      tma::mbar_init(&ctl.sched_full[s], 1);
      tma::mbar_init(&ctl.sched_empty[s], kConsumerWarps);
    }
    tma::fence_barrier_init();
  }
  __syncthreads();  // the last block-wide barrier: the producer's idle threads leave below
  if (threadIdx.x < 128) {
    tma::setmaxnreg_dec<kProducerRegs>();
    if (threadIdx.x < 32 && tma::elect_one()) produce<G>(tiles, &map_a, &map_b, claims, stages, ctl);
    return;
  }
  tma::setmaxnreg_inc<kConsumerRegs>();
  const Epilogue ep{staging + (int(threadIdx.x) - 128) / 32 * kEpiWarpBytes, &map_c, accumulate, pair_c, vec_c, 0};
  consume<G, kTma>(tiles, stages, ctl, C, ep);
#else
  __trap();  // launched only on sm_90 devices, which run the sm_90a code
#endif
}

// One block per SM, no more than there are tiles; under the emulation, which runs blocks one after
// another, 2 (block 0 claims nearly every tile, block 1 finds the sentinel or a few).
int resident_blocks(size_t tiles) {
  int sms = 2;
#ifndef MOE_CUDA_EMULATION
  int device = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
#endif
  return int(std::min(tiles, size_t(std::max(sms, 1))));
}

// A bf16 tensor map of a row-major [rows][cols] matrix (row stride ld elements), boxes of box_rows
// rows x 64 columns.
TensorMap matrix_map(const bf16* base, uint64_t rows, uint64_t cols, uint64_t ld, uint32_t box_rows, const char* op) {
  const uint64_t dims[2] = {cols, rows}, strides[1] = {ld * 2};
  const uint32_t box[2] = {uint32_t(kBK), box_rows};
  return make_tensor_map_bf16(base, 2, dims, strides, box, op);
}
// The same of `experts` such matrices back to back, boxes of one expert's box_rows x 64.
TensorMap experts_map(const bf16* base, int experts, uint64_t rows, uint64_t cols, uint32_t box_rows, const char* op) {
  const uint64_t dims[3] = {cols, rows, uint64_t(experts)}, strides[2] = {cols * 2, rows * cols * 2};
  const uint32_t box[3] = {uint32_t(kBK), box_rows, 1};
  return make_tensor_map_bf16(base, 3, dims, strides, box, op);
}

// Whether the epilogue may stage through shared memory (store_rows_staged): the output allows
// 16-byte accesses, and MOE_WGMMA4_DIRECT_STORES=1 is not set (a measurement switch: store_tile's
// direct stores instead, to compare the two on a GPU).
template <class Tout>
bool staged_stores(const Tout* C, long ld) {
  const char* direct = std::getenv("MOE_WGMMA4_DIRECT_STORES");
  if (direct && std::strcmp(direct, "1") == 0) return false;
  return reinterpret_cast<uintptr_t>(C) % 16 == 0 && ld % long(16 / sizeof(Tout)) == 0;
}

// Whether the epilogue stores by TMA (store_rows_tma): MOE_WGMMA4_TMA_STORES=1 (opt-in until a
// GPU measures it against the staged stores), an overwrite (accumulating keeps the staged loads and
// adds) of an output the staged stores take (16-byte rows, so a tensor map can stride it) whose
// rows a TMA coordinate reaches.
bool tma_stores(bool staged, bool accumulate, uint64_t out_rows) {
  return opt_in_switch("MOE_WGMMA4_TMA_STORES", "bulk tensor stores") && staged && !accumulate && out_rows >= 1 &&
         out_rows < (uint64_t(1) << 31);
}
// The output [out_rows][ld] as boxes of 16 rows x 128 bytes (the TMA stores' map). dims[0] = ld is
// whole 16-byte chunks (the row stride's rule), so the hardware's chunk-wise clipping of the last
// column (tma.h) writes nothing past a row.
template <class Tout>
TensorMap output_map(Tout* C, uint64_t out_rows, long ld, const char* op) {
  const uint64_t dims[2] = {uint64_t(ld), out_rows}, strides[1] = {uint64_t(ld) * sizeof(Tout)};
  const uint32_t box[2] = {uint32_t(128 / sizeof(Tout)), 16};
  return make_tensor_map(C, int(sizeof(Tout)), 2, dims, strides, box, op);
}

template <class G, class Tiles, class Tout>
void launch_tiles(const char* op, const TensorMap& map_a, const TensorMap& map_b, const Tiles& tiles,
                  size_t max_tiles, Tout* C, bool accumulate, long ld, uint64_t out_rows, cudaStream_t stream) {
  MOE_CHECK(max_tiles < (size_t(1) << 31), op, max_tiles, " tiles exceed the int tile index");
  Workspace<int> claims{1};
  device_memset_async(claims.get(), 0, sizeof(int), stream);
  const bool staged = staged_stores(C, ld);
  const unsigned blocks = unsigned(resident_blocks(max_tiles));
  if (tma_stores(staged, accumulate, out_rows)) {
    allow_dynamic_shared(op, tma_wgmma_kernel<G, Tiles, device_t<Tout>, true>, kSmemBytes);
    MOE_LAUNCH((tma_wgmma_kernel<G, Tiles, device_t<Tout>, true>), blocks, kBlockThreads, kSmemBytes, stream, map_a,
               map_b, output_map(C, out_rows, ld, op), tiles, claims.get(), dev(C), accumulate, pair_stores(C, ld),
               staged);
  } else {
    allow_dynamic_shared(op, tma_wgmma_kernel<G, Tiles, device_t<Tout>, false>, kSmemBytes);
    MOE_LAUNCH((tma_wgmma_kernel<G, Tiles, device_t<Tout>, false>), blocks, kBlockThreads, kSmemBytes, stream, map_a,
               map_b, TensorMap{}, tiles, claims.get(), dev(C), accumulate, pair_stores(C, ld), staged);
  }
}

// Runs f(Geometry<pingpong>{}).
template <class F>
void with_geometry(bool pingpong, F f) {
  if (pingpong)
    f(Geometry<true>{});
  else
    f(Geometry<false>{});
}

}  // namespace sm90::wgmma4

using namespace sm90;
using namespace sm90::wgmma4;

template <bool kTransB, class Tout>
void grouped_rows_sm90_tma(const bf16* A, const bf16* B, const int32_t* offsets, const int32_t* tile_starts,
                           int experts, long rows, long n_out, long k_red, Tout* C, bool accumulate, bool pingpong,
                           cudaStream_t stream) {
  if (rows == 0) return;
  const char* op = kTransB ? "cuda::grouped_gemm_nt (wgmma4)" : "cuda::grouped_gemm_nn (wgmma4)";
  with_geometry(pingpong, [&](auto g) {
    using G = decltype(g);
    const int col_tiles = int(ceil_div(n_out, G::kBN));
    // Each expert's partial last tile adds at most one tile to rows / kBM.
    const size_t max_tiles = size_t(ceil_div(rows, kBM) + unsigned(experts)) * col_tiles;
    const TensorMap map_a = matrix_map(A, uint64_t(rows), uint64_t(k_red), uint64_t(k_red), kBM, op);
    const TensorMap map_b = kTransB ? experts_map(B, experts, uint64_t(n_out), uint64_t(k_red), G::kBN, op)
                                    : experts_map(B, experts, uint64_t(k_red), uint64_t(n_out), 64, op);
    const RowTiles<kTransB, G::kBN> tiles{offsets, tile_starts, experts, col_tiles, n_out, k_red};
    launch_tiles<G>(op, map_a, map_b, tiles, max_tiles, C, accumulate, n_out, uint64_t(rows), stream);
  });
}

template <class Tout>
void grouped_gemm_tn_sm90_tma(const bf16* dy, const bf16* x, const int32_t* offsets, int experts, long M, long K,
                              Tout* dw, bool accumulate, bool pingpong, cudaStream_t stream) {
  const char* op = "cuda::grouped_gemm_tn (wgmma4)";
  // The rows' extent is not passed here; no copy reaches past an expert's last row (see the header
  // comment), so any bound on the int32 offsets serves.
  const uint64_t row_bound = uint64_t(1) << 31;
  const TensorMap map_a = matrix_map(dy, row_bound, uint64_t(M), uint64_t(M), 64, op);
  const TensorMap map_b = matrix_map(x, row_bound, uint64_t(K), uint64_t(K), 64, op);
  with_geometry(pingpong, [&](auto g) {
    using G = decltype(g);
    const int tiles_n = int(ceil_div(K, G::kBN)), tiles_mn = int(ceil_div(M, kBM)) * tiles_n;
    const WeightTiles<G::kBN> tiles{{offsets, experts, tiles_n, tiles_mn, M, K, accumulate}};
    launch_tiles<G>(op, map_a, map_b, tiles, size_t(tiles_mn) * size_t(experts), dw, accumulate, K,
                    uint64_t(experts) * uint64_t(M), stream);
  });
}

#define MOE_INSTANTIATE(T)                                                                                          \
  template void grouped_rows_sm90_tma<true, T>(const bf16*, const bf16*, const int32_t*, const int32_t*, int, long, \
                                               long, long, T*, bool, bool, cudaStream_t);                           \
  template void grouped_rows_sm90_tma<false, T>(const bf16*, const bf16*, const int32_t*, const int32_t*, int,      \
                                                long, long, long, T*, bool, bool, cudaStream_t);                    \
  template void grouped_gemm_tn_sm90_tma<T>(const bf16*, const bf16*, const int32_t*, int, long, long, T*, bool,    \
                                            bool, cudaStream_t);
MOE_INSTANTIATE(float)
MOE_INSTANTIATE(bf16)
#undef MOE_INSTANTIATE

}  // namespace moe::cuda
