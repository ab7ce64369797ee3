// Exact block-wide selection of the m-th largest of n floats: a most-significant-digit radix
// select over order-preserving integer keys in three passes (digits of 12, 10 and 10 bits), with a
// shared histogram (integer atomics only, so the answer does not depend on thread timing). For
// kernel sources.
//
// Why this shape: up to kCached values per thread are read (and turned into keys) once into
// registers, so with enough of them the passes touch no memory but shared; the wide first digit
// (sign, exponent and 3 mantissa bits) spreads values of similar magnitude over 8 bins per
// binade, which keeps the first pass's atomics from piling onto a few bins; and the bucket
// holding the rank is found by a block scan over the bins instead of one thread walking them.
#pragma once
#include "core/cuda/kernel.h"

namespace moe::cuda {

// Unsigned keys in the order of the floats (negatives flipped entirely, positives get the sign bit).
__device__ __forceinline__ unsigned order_key(float f) {
  const unsigned u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float key_value(unsigned key) {
  return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}

// Exclusive prefix sum over the threads of the block in thread order (blockDim.x a multiple of 32);
// every thread must call it. Integer adds in a fixed order.
__device__ inline unsigned block_exclusive_sum(unsigned v) {
  MOE_SHARED(unsigned, warp_totals, [32]);
  const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
  unsigned inclusive = v;
  for (unsigned o = 1; o < 32; o <<= 1) {
    const unsigned up = __shfl_up_sync(0xffffffffu, inclusive, o);
    if (lane >= o) inclusive += up;
  }
  __syncthreads();  // a previous call's readers of warp_totals are done
  if (lane == 31) warp_totals[warp] = inclusive;
  __syncthreads();
  // Every warp scans the warp totals (lane w holds warp w's) and takes the sum before its own.
  const unsigned total = lane < (blockDim.x >> 5) ? warp_totals[lane] : 0u;
  unsigned scanned = total;
  for (unsigned o = 1; o < 32; o <<= 1) {
    const unsigned up = __shfl_up_sync(0xffffffffu, scanned, o);
    if (lane >= o) scanned += up;
  }
  const unsigned before = __shfl_sync(0xffffffffu, scanned - total, int(warp));
  return before + inclusive - v;
}

// The m-th largest (1 <= m <= n) of value(0) .. value(n - 1), returned to every thread of the
// block; every thread must call it (blockDim.x a multiple of 32). Values i = threadIdx.x + r
// blockDim.x for r < kCached are read once; any beyond kCached blockDim.x are re-read each pass.
// Each pass narrows to the digit whose bucket holds the m-th largest of the keys still in play.
// kCached costs registers: a kernel that caches many (the dual prices' 16) declares
// __launch_bounds__ for its largest block; the default keeps one.
template <int kCached = 1, class Value>
__device__ float block_nth_largest(Value value, long n, unsigned m) {
  constexpr int kMaxBins = 1 << 12;
  MOE_SHARED(unsigned, hist, [kMaxBins]);
  MOE_SHARED(unsigned, chosen, [4]);  // the digit, the rank left within it, its count, the early answer
  const long stride = blockDim.x, cached_end = stride * kCached;
  unsigned keys[kCached];
MOE_UNROLL
  for (int r = 0; r < kCached; ++r) {
    const long i = threadIdx.x + r * stride;
    keys[r] = i < n ? order_key(value(i)) : 0u;
  }
  unsigned prefix = 0, mask = 0, remaining = m;
  for (int pass = 0; pass < 3; ++pass) {
    const int shift = pass == 0 ? 20 : pass == 1 ? 10 : 0;
    const int bins = pass == 0 ? kMaxBins : 1 << 10;
    const unsigned digit_mask = unsigned(bins - 1);
    __syncthreads();  // a previous pass's (or call's) readers of hist and chosen are done
    for (int b = threadIdx.x; b < bins; b += blockDim.x) hist[b] = 0;
    __syncthreads();
MOE_UNROLL
    for (int r = 0; r < kCached; ++r)
      if (threadIdx.x + r * stride < n && (keys[r] & mask) == prefix)
        atomicAdd(&hist[(keys[r] >> shift) & digit_mask], 1u);
    for (long i = cached_end + threadIdx.x; i < n; i += stride) {
      const unsigned key = order_key(value(i));
      if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & digit_mask], 1u);
    }
    __syncthreads();
    // Thread t owns the per_thread bins below bins - t per_thread (descending); `above` counts the
    // keys in play in the higher bins of the threads before it. The one thread whose bins hold the
    // rank walks them.
    const int per_thread = (bins + int(blockDim.x) - 1) / int(blockDim.x);
    const int top = bins - 1 - int(threadIdx.x) * per_thread;
    const int bottom = top - per_thread + 1 > 0 ? top - per_thread + 1 : 0;
    unsigned mine = 0;
    for (int b = top; b >= bottom; --b) mine += hist[b];
    unsigned above = block_exclusive_sum(mine);
    if (above < remaining && remaining <= above + mine) {
      int b = top;
      for (; above + hist[b] < remaining; --b) above += hist[b];
      chosen[0] = unsigned(b);
      chosen[1] = remaining - above;
      chosen[2] = hist[b];
      chosen[3] = chosen[1] == 1 ? 0u : ~0u;  // the identity of the max (or the min) below
    }
    __syncthreads();
    prefix |= chosen[0] << shift;
    mask |= digit_mask << shift;
    remaining = chosen[1];
    // Early exit: when the rank is the bucket's first (or last) key, the answer is the bucket's
    // largest (or smallest) key: one integer atomicMax (atomicMin) over the keys in it instead of
    // the remaining passes. A bucket of one or two keys always qualifies, and after two passes
    // (22 bits) the bucket is that small unless values repeat.
    const unsigned in_bucket = chosen[2];
    if (pass < 2 && (remaining == 1 || remaining == in_bucket)) {  // block-uniform
      const bool largest = remaining == 1;
MOE_UNROLL
      for (int r = 0; r < kCached; ++r)
        if (threadIdx.x + r * stride < n && (keys[r] & mask) == prefix)
          largest ? void(atomicMax(&chosen[3], keys[r])) : void(atomicMin(&chosen[3], keys[r]));
      for (long i = cached_end + threadIdx.x; i < n; i += stride) {
        const unsigned key = order_key(value(i));
        if ((key & mask) == prefix) largest ? void(atomicMax(&chosen[3], key)) : void(atomicMin(&chosen[3], key));
      }
      __syncthreads();
      return key_value(chosen[3]);
    }
  }
  return key_value(prefix);
}

}  // namespace moe::cuda
