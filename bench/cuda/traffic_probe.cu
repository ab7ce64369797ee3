// bench/cuda/traffic_probe.h: one grid-stride pass over the larger side's 16-byte vectors.
#include "bench/cuda/traffic_probe.h"

#include <algorithm>

#include "core/error.h"

namespace moe::bench {
namespace {

// n = the larger count; unit i reads input vector (i * in_step) >> 32 and writes output vector
// (i * out_step) >> 32 (the steps: vectors per unit in 32.32 fixed point, <= 1; a first version
// divided per element and measured 2.0-2.2 TB/s instead of 2.6-2.9), so the smaller side's
// vectors are each touched by neighbouring threads (one memory access). Four units per thread in
// flight at once: the loads first, then the stores.
__global__ void mixed_traffic_kernel(const uint4* in, uint4* out, size_t n, uint64_t in_step, uint64_t out_step) {
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  for (; i + 3 * stride < n; i += 4 * stride) {
    uint4 v[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) v[u] = in[((i + u * stride) * in_step) >> 32];
#pragma unroll
    for (int u = 0; u < 4; ++u)
      out[((i + u * stride) * out_step) >> 32] = make_uint4(v[u].x + 1u, v[u].y, v[u].z, v[u].w);
  }
  for (; i < n; i += stride) {
    const uint4 v = in[(i * in_step) >> 32];
    out[(i * out_step) >> 32] = make_uint4(v.x + 1u, v.y, v.z, v.w);
  }
}

}  // namespace

void mixed_traffic(const void* in, size_t in_bytes, void* out, size_t out_bytes, cudaStream_t stream) {
  MOE_CHECK(in_bytes % 16 == 0 && out_bytes % 16 == 0 && in_bytes > 0 && out_bytes > 0, "mixed_traffic", "in ",
            in_bytes, " and out ", out_bytes, " bytes: expected positive multiples of 16");
  int device = 0, sms = 1;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  const size_t n = std::max(in_bytes, out_bytes) / 16, blocks = std::min<size_t>(size_t(sms) * 8, (n + 255) / 256);
  MOE_CHECK(n < (size_t(1) << 31), "mixed_traffic", n, " vectors: the fixed-point steps need fewer than 2^31");
  const uint64_t in_step = (uint64_t(in_bytes / 16) << 32) / n, out_step = (uint64_t(out_bytes / 16) << 32) / n;
  mixed_traffic_kernel<<<unsigned(blocks), 256, 0, stream>>>(static_cast<const uint4*>(in), static_cast<uint4*>(out), n,
                                                             in_step, out_step);
  const cudaError_t err = cudaGetLastError();
  MOE_CHECK(err == cudaSuccess, "mixed_traffic", "launch: ", cudaGetErrorString(err));
}

}  // namespace moe::bench
