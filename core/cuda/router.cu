// Top-k by repeated selection (row_topk.h). The histogram counts in shared memory first, then one
// atomic per expert per block.
#include "core/cuda/launch.h"
#include "core/cuda/memory.h"
#include "core/cuda/router.h"
#include "core/cuda/row_topk.h"

namespace moe::cuda {
namespace {

// Per token, the k largest of row[e] (+ bias[e] when kBiased: the same fp32 sum each time), in
// order, ties to the lower expert index.
template <bool kBiased>
__global__ void router_topk_kernel(const float* scores, const float* bias, float* values, int32_t* indices,
                                   long tokens, int experts, int k) {
  const long t = blockIdx.x * long(blockDim.x) + threadIdx.x;
  if (t >= tokens) return;
  const float* row = scores + t * experts;
  row_topk(
      [&](int e) {
        if constexpr (kBiased) return row[e] + bias[e];
        return row[e];
      },
      experts, k,
      [&](int s, float v, int e) {
        values[t * k + s] = v;
        indices[t * k + s] = e;
      });
}

__global__ void load_histogram_kernel(const int32_t* ids, long n, int experts, int32_t* counts) {
  MOE_DYNAMIC_SHARED(int32_t, local);
  for (int e = threadIdx.x; e < experts; e += blockDim.x) local[e] = 0;
  __syncthreads();
  for (long i = blockIdx.x * long(blockDim.x) + threadIdx.x; i < n; i += long(gridDim.x) * blockDim.x) {
    const int32_t id = ids[i];
    if (id >= 0 && id < experts) atomicAdd(&local[id], 1);
  }
  __syncthreads();
  for (int e = threadIdx.x; e < experts; e += blockDim.x)
    if (local[e]) atomicAdd(&counts[e], local[e]);
}

}  // namespace

void router_topk(const float* scores, float* values, int32_t* indices, long tokens, int experts, int k,
                 cudaStream_t stream) {
  MOE_CHECK(experts > 0 && k >= 1 && k <= experts, "cuda::router_topk", "k = ", k, " must be in [1, ", experts, "]");
  if (tokens > 0)
    MOE_LAUNCH(router_topk_kernel<false>, ceil_div(tokens, 128), 128, 0, stream, scores, static_cast<const float*>(nullptr),
               values, indices, tokens, experts, k);
}

void router_topk_biased(const float* scores, const float* bias, float* values, int32_t* indices, long tokens,
                        int experts, int k, cudaStream_t stream) {
  MOE_CHECK(experts > 0 && k >= 1 && k <= experts, "cuda::router_topk_biased", "k = ", k, " must be in [1, ", experts,
            "]");
  if (tokens > 0)
    MOE_LAUNCH(router_topk_kernel<true>, ceil_div(tokens, 128), 128, 0, stream, scores, bias, values, indices, tokens,
               experts, k);
}

void load_histogram(const int32_t* ids, long n, int experts, int32_t* counts, cudaStream_t stream) {
  MOE_CHECK(experts > 0 && experts <= 16384, "cuda::load_histogram", "experts = ", experts,
            ", expected 1..16384 (the counters live in shared memory)");
  device_memset_async(counts, 0, sizeof(int32_t) * experts, stream);
  if (n <= 0) return;
  unsigned blocks = ceil_div(n, 256);
  if (blocks > 256) blocks = 256;
  MOE_LAUNCH(load_histogram_kernel, blocks, 256, sizeof(int32_t) * experts, stream, ids, n, experts, counts);
}

}  // namespace moe::cuda
