// Staging a block's contiguous rows of a row-major matrix into padded shared memory, for kernel
// sources. A load-then-store loop waits one L2 round trip per element (the store needs the load);
// here each thread keeps kStageBatch loads in flight before it stores any of them.
#pragma once
#include "core/cuda/kernel.h"

namespace moe::cuda {

constexpr int kStageBatch = 8;

// tile[r * stride + c] = src[r * cols + c] for r < rows, c < cols (src: the block's first row).
// Every thread of the block takes part; the caller synchronizes before reading the tile.
__device__ __forceinline__ void stage_rows(const float* src, int rows, int cols, float* tile, int stride) {
  const int n = rows * cols, step = int(blockDim.x);
  for (int i0 = int(threadIdx.x); i0 < n; i0 += kStageBatch * step) {
    float v[kStageBatch];
MOE_UNROLL
    for (int b = 0; b < kStageBatch; ++b) v[b] = i0 + b * step < n ? src[i0 + b * step] : 0.0f;
MOE_UNROLL
    for (int b = 0; b < kStageBatch; ++b) {
      const int i = i0 + b * step;
      if (i < n) tile[(i / cols) * stride + i % cols] = v[b];
    }
  }
}

}  // namespace moe::cuda
