// Warp and block reductions for kernels (sum, max), every thread gets the result. Block versions
// need blockDim.x a multiple of 32 (at most 1024) and must be reached by every thread of the block.
#pragma once
#include "core/cuda/kernel.h"

namespace moe::cuda {

constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

// The leading barrier lets a kernel call these back to back: the previous call's readers of the
// partials are done before they are overwritten.
__device__ inline float block_sum(float v) {
  MOE_SHARED(float, partials, [32]);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) partials[warp] = v;
  __syncthreads();
  return warp_sum(lane < nwarps ? partials[lane] : 0.0f);
}
__device__ inline float block_max(float v) {
  MOE_SHARED(float, partials, [32]);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) partials[warp] = v;
  __syncthreads();
  return warp_max(lane < nwarps ? partials[lane] : -INFINITY);
}

// Threads for a one-block-per-row kernel: enough warps to cover the row, at most `cap`.
inline unsigned row_block_threads(long cols, unsigned cap = 256) {
  unsigned t = unsigned((cols + 31) / 32 * 32);
  return t < 32 ? 32 : (t > cap ? cap : t);
}

}  // namespace moe::cuda
