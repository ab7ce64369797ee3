// The device pieces the Hopper grouped GEMMs share (grouped_gemm_sm90.cu's 128 x 128 kernels and
// grouped_gemm_sm90_persistent.cu's 128 x 256 ones): an operand slice's copies into the 128B-swizzled
// layouts wgmma reads (the layouts are described in grouped_gemm_sm90.cu), their descriptors, the
// products of one slice, and the accumulators' stores (compiled everywhere; the kernels that call
// them run only sm_90a code, wgmma.h's traps elsewhere). 256 threads: two warpgroups, warpgroup wg
// owning output rows 64 wg .. 64 wg + 63.
#pragma once
#include <cstdint>

#include "core/cuda/async_copy.h"
#include "core/cuda/kernel.h"
#include "core/cuda/wgmma.h"

namespace moe::cuda::sm90 {

constexpr int kBM = 128, kBK = 64, kThreads = 256;
constexpr int kRowBytes = kBK * 2;             // 128: one swizzled row
constexpr int kHalfBytes = kBK * kRowBytes;    // 8 KiB: one [64 k][64 o] block of an MN-major tile
constexpr int kATileBytes = kBM * kRowBytes;   // 16 KiB: A's slice (128 output rows)
constexpr int kAlign = 1024;                   // the 128B swizzle atom
constexpr int kChunk = 8;                      // bf16 per 16-byte copy

// One operand as seen from global memory (as grouped_gemm.cu's): element (o, kk) (o = row or
// column of the output tile, kk = reduction index from the block's start) is at base[o * ld + kk]
// when K-major, else at base[kk * ld + o]; only o < o_valid and kk < k_len exist (zeros elsewhere).
struct Operand {
  const dbf16* base;
  long ld;
  int o_valid;
  long k_len;
};

// `#pragma unroll (n)` on the GPU (n may name a template parameter); nothing for the host compiler.
#ifdef MOE_CUDA_EMULATION
#define MOE_SM90_UNROLL_BY(n)
#else
#define MOE_SM90_PRAGMA(x) _Pragma(#x)
#define MOE_SM90_UNROLL_BY(n) MOE_SM90_PRAGMA(unroll(n))
#endif

// Issues the copies of reduction slice s of op into its swizzled tile of kRows output rows or
// columns: K-major [kRows][64] 128-byte rows; MN-major kRows / 64 blocks of [64 k][64 o]. ld,
// o_valid (MN-major) and k_len (K-major) are multiples of 8, so every 16-byte chunk is whole or out.
// kUnroll: the copies unrolled at a time (by default all of them: the compiler then keeps every
// address in registers, which a kernel holding 128 accumulators cannot afford).
template <bool kMn, int kRows, int kUnroll = kRows * kBK / kChunk / kThreads>
__device__ __forceinline__ void load_slice(const Operand& op, int s, unsigned char* tile) {
  static_assert(kRows % 64 == 0 && kRows * kBK / kChunk % kThreads == 0, "whole chunks per thread");
  const long k0 = long(s) * kBK;
  MOE_SM90_UNROLL_BY(kUnroll)
  for (int i = 0; i < kRows * kBK / kChunk / kThreads; ++i) {
    const int c = int(threadIdx.x) + i * kThreads;
    if constexpr (kMn) {
      const int kk = c / (kRows / kChunk), o = c % (kRows / kChunk) * kChunk;
      const bool in = o < op.o_valid && k0 + kk < op.k_len;
      unsigned char* dst = tile + (o / 64) * kHalfBytes + kk * kRowBytes + ((((o % 64) / kChunk) ^ (kk % 8)) * 16);
      cp_async16(dst, in ? op.base + (k0 + kk) * op.ld + o : op.base, in);
    } else {
      const int o = c / (kBK / kChunk), chunk = c % (kBK / kChunk);
      const long k = k0 + long(chunk) * kChunk;
      const bool in = o < op.o_valid && k < op.k_len;
      cp_async16(tile + o * kRowBytes + ((chunk ^ (o % 8)) * 16), in ? op.base + o * op.ld + k : op.base, in);
    }
  }
}

// The descriptor of k16 step ks of a swizzled tile (or of warpgroup's 64-row part of A's).
template <bool kMn>
__device__ __forceinline__ uint64_t slice_desc(uint32_t tile, int ks) {
  if constexpr (kMn)  // LBO: the next 64-wide block; SBO: the next 8 k rows
    return wgmma::make_desc(tile + uint32_t(16 * kRowBytes * ks), kHalfBytes, 8 * kRowBytes, wgmma::Swizzle::b128);
  else  // LBO unused; SBO: the next 8 rows
    return wgmma::make_desc(tile + uint32_t(32 * ks), 16, 8 * kRowBytes, wgmma::Swizzle::b128);
}

// The shared-memory offset of this thread's warpgroup's 64 rows in A's tile: 64 K-major rows or the
// MN-major 64-wide block, 8 KiB either way.
__device__ __forceinline__ uint32_t a_part() { return uint32_t(int(threadIdx.x) / 128 * (kATileBytes / 2)); }

// The products of one 64-deep slice whose A part and B tile sit at shared addresses sa and sb:
// 4 m64nNk16 (the first overwrites the accumulators when !accumulate), committed as one group.
template <int kBN, bool kAMn, bool kBMn>
__device__ __forceinline__ void issue_slice_products(float (&acc)[kBN / 2], uint32_t sa, uint32_t sb,
                                                     bool accumulate) {
  wgmma::fence_operand(acc);
  wgmma::fence();
  MOE_UNROLL
  for (int ks = 0; ks < kBK / 16; ++ks)
    wgmma::mma_async<kBN, kAMn, kBMn>(acc, slice_desc<kAMn>(sa, ks), slice_desc<kBMn>(sb, ks), accumulate || ks > 0);
  wgmma::commit_group();
}
// Waits for the previous slice's products only, so the tensor cores work on the newest slice
// while the caller moves on.
template <int kAcc>
__device__ __forceinline__ void retire_previous_slice(float (&acc)[kAcc]) {
  wgmma::wait_group<1>();
  wgmma::fence_operand(acc);
}
template <int kBN, bool kAMn, bool kBMn>
__device__ __forceinline__ void slice_products(float (&acc)[kBN / 2], uint32_t sa, uint32_t sb, bool accumulate) {
  issue_slice_products<kBN, kAMn, kBMn>(acc, sa, sb, accumulate);
  retire_previous_slice(acc);
}

// The expert owning 128-row tile `tile`, the last e with tile_starts[e] <= tile: binary lifting
// over e (tile_starts is non-decreasing, tile_starts[0] = 0, experts <= 65535).
__device__ __forceinline__ int expert_of_tile(const int32_t* tile_starts, int experts, int tile) {
  int e = 0;
  for (int step = 1 << 15; step > 0; step >>= 1)
    if (e + step < experts && tile_starts[e + step] <= tile) e += step;
  return e;
}

__device__ __forceinline__ int clamp_extent(long n, int cap) { return n < 0 ? 0 : (n > cap ? cap : int(n)); }

// Output tile t of the row forms (nt / nn: 128-row tiles of the rows grouped by expert, tile_starts
// as grouped_gemm.cu's, times kBN-column tiles, the column tile fastest): its expert, first row and
// column, and how many of its rows and columns exist (rows past the expert's end belong to the
// next expert: computed, never stored).
struct RowTile {
  int e;
  long row0, n0;
  int rows, cols;
};
template <int kBN>
__device__ __forceinline__ RowTile row_tile(const int32_t* offsets, const int32_t* tile_starts, int experts,
                                            int col_tiles, long n_out, int t) {
  const int tile = t / col_tiles, e = expert_of_tile(tile_starts, experts, tile);
  const long row0 = offsets[e] + long(tile - tile_starts[e]) * kBM, n0 = long(t % col_tiles) * kBN;
  return RowTile{e, row0, n0, clamp_extent(offsets[e + 1] - row0, kBM), clamp_extent(n_out - n0, kBN)};
}

// The tiles of tn (dW [E][M][K] in 128 x kBN tiles, expert by expert, columns fastest): tile(t)
// gives tile t's expert, its expert's rows [r_begin, r_begin + r_len), where it lies in dW, and how
// much of it exists (rows = 0 for an empty expert when accumulating: nothing to add).
struct WeightTile {
  int e;
  long m0, n0, r_begin, r_len, out;
  int rows, cols;
};
template <int kBN>
struct WeightTileSpace {
  const int32_t* offsets;
  int experts, tiles_n, tiles_mn;
  long M, K;
  bool accumulate;

  __device__ int count() const { return tiles_mn * experts; }
  __device__ long ld() const { return K; }
  __device__ WeightTile tile(int t) const {
    const int e = t / tiles_mn, mn = t % tiles_mn;
    const long m0 = long(mn / tiles_n) * kBM, n0 = long(mn % tiles_n) * kBN;
    const long r_begin = offsets[e], r_len = offsets[e + 1] - r_begin;
    const int rows = r_len == 0 && accumulate ? 0 : clamp_extent(M - m0, kBM), cols = clamp_extent(K - n0, kBN);
    return WeightTile{e, m0, n0, r_begin, r_len, long(e) * M * K + m0 * K + n0, rows, cols};
  }
};

// Whether C (row stride ld) allows one two-element store per pair of adjacent columns.
template <class Tout>
bool pair_stores(const Tout* C, long ld) {
  return reinterpret_cast<uintptr_t>(C) % (2 * sizeof(Tout)) == 0 && ld % 2 == 0;
}

// Adds (or writes) a pair of adjacent columns; `pair`: both exist and the address is aligned for
// one two-element access.
template <class Tout>
__device__ __forceinline__ void store_pair(Tout* p, float v0, float v1, bool second, bool pair, bool accumulate) {
  if (pair) {
    struct alignas(2 * sizeof(Tout)) Two {
      Tout v[2];
    };
    Two t;
    if (accumulate) t = *reinterpret_cast<const Two*>(p);
    t.v[0] = from_float<Tout>(v0 + (accumulate ? to_float(t.v[0]) : 0.0f));
    t.v[1] = from_float<Tout>(v1 + (accumulate ? to_float(t.v[1]) : 0.0f));
    *reinterpret_cast<Two*>(p) = t;
    return;
  }
  p[0] = from_float<Tout>(v0 + (accumulate ? to_float(p[0]) : 0.0f));
  if (second) p[1] = from_float<Tout>(v1 + (accumulate ? to_float(p[1]) : 0.0f));
}

// The registers straight to global memory: rows [0, nrows) x cols [0, ncols) of the tile at out
// (row stride ld), two adjacent columns per access. By the accumulator map (wgmma.h) registers
// 4 j, 4 j + 1 hold columns 8 j + c0, + 1 of row r and 4 j + 2, 4 j + 3 the same of row r + 8.
// When accumulating, the compiler would hoist every load of the old values above the stores (128
// more registers for an fp32 128 x 256 tile, which then spills): an empty asm with a memory clobber
// every kLoadsAhead n8 slices bounds the loads in flight. `part`: the warpgroup's 64-row part of
// the tile (its number in the block, unless the block has other warpgroups first: wgmma4's producer).
template <bool kAccumulate, class Tout, int kAcc>
__device__ __forceinline__ void store_tile_as(const float (&acc)[kAcc], Tout* out, long ld, int nrows, int ncols,
                                              bool pair, int part) {
  constexpr int kLoadsAhead = 4;
  static_assert(kAcc % (4 * kLoadsAhead) == 0, "whole groups of n8 slices");
  const int t = int(threadIdx.x) % 128, r = part * 64 + wgmma::acc_row(t, 0);
  const int c0 = wgmma::acc_col(t, 0);
  Tout* const p = out + long(r) * ld + c0;
  Tout* const q = p + 8 * ld;
  const bool row_p = r < nrows, row_q = r + 8 < nrows;
  MOE_UNROLL
  for (int j = 0; j < kAcc / 4; ++j) {
    if (kAccumulate && j % kLoadsAhead == 0) asm volatile("" ::: "memory");
    const int c = c0 + 8 * j;
    if (c >= ncols) continue;
    const bool second = c + 1 < ncols;
    if (row_p) store_pair(p + 8 * j, acc[4 * j], acc[4 * j + 1], second, pair && second, kAccumulate);
    if (row_q) store_pair(q + 8 * j, acc[4 * j + 2], acc[4 * j + 3], second, pair && second, kAccumulate);
  }
}
template <class Tout, int kAcc>
__device__ __forceinline__ void store_tile(const float (&acc)[kAcc], Tout* out, long ld, int nrows, int ncols,
                                           bool accumulate, bool pair, int part = -1) {
  if (part < 0) part = int(threadIdx.x) / 128;
  if (accumulate)
    store_tile_as<true>(acc, out, ld, nrows, ncols, pair, part);
  else
    store_tile_as<false>(acc, out, ld, nrows, ncols, pair, part);
}

}  // namespace moe::cuda::sm90
