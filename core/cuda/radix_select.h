// Exact block-wide selection of the m-th largest of n floats: a most-significant-digit radix
// select over order-preserving integer keys, 8 bits per pass, with a shared histogram (integer
// atomics only, so the answer does not depend on thread timing). For kernel sources.
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

// The m-th largest (1 <= m <= n) of value(0) .. value(n - 1), returned to every thread of the
// block; every thread must call it. Four passes, each narrowing to the digit whose bucket holds
// the m-th largest of the values still in play.
template <class Value>
__device__ float block_nth_largest(Value value, long n, unsigned m) {
  MOE_SHARED(unsigned, hist, [256]);
  MOE_SHARED(unsigned, chosen, [2]);  // the digit and the rank left within it
  unsigned prefix = 0, mask = 0, remaining = m;
  for (int shift = 24; shift >= 0; shift -= 8) {
    __syncthreads();  // a previous call's readers of chosen are done
    for (int b = threadIdx.x; b < 256; b += blockDim.x) hist[b] = 0;
    __syncthreads();
    for (long i = threadIdx.x; i < n; i += blockDim.x) {
      const unsigned key = order_key(value(i));
      if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      unsigned above = 0;
      int b = 255;
      for (; b > 0 && above + hist[b] < remaining; --b) above += hist[b];
      chosen[0] = unsigned(b);
      chosen[1] = remaining - above;
    }
    __syncthreads();
    prefix |= chosen[0] << shift;
    mask |= 255u << shift;
    remaining = chosen[1];
  }
  return key_value(prefix);
}

}  // namespace moe::cuda
