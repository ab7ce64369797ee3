// Permutation kernels. The plan is a stable counting sort in three launches: per-chunk expert
// counts, a block scan turning counts into start positions, and a scatter that ranks each
// assignment among the earlier same-expert ones in its chunk. No atomics decide an order.
#include "core/cuda/block_reduce.h"
#include "core/cuda/launch.h"
#include "core/cuda/caching_allocator.h"
#include "core/cuda/memory.h"
#include "core/cuda/permute.h"

namespace moe::cuda {
namespace {

constexpr int kChunk = 256;  // assignments per block in the plan kernels (= blockDim)
constexpr int kMaxExperts = 1024;

__global__ void chunk_count_kernel(const int32_t* ids, long n, int experts, int32_t* chunk_counts) {
  MOE_DYNAMIC_SHARED(int32_t, local);
  for (int e = threadIdx.x; e < experts; e += blockDim.x) local[e] = 0;
  __syncthreads();
  const long i = blockIdx.x * long(kChunk) + threadIdx.x;
  if (i < n && ids[i] >= 0 && ids[i] < experts) atomicAdd(&local[ids[i]], 1);
  __syncthreads();
  for (int e = threadIdx.x; e < experts; e += blockDim.x) chunk_counts[blockIdx.x * long(experts) + e] = local[e];
}

// One block, one thread per expert: totals over chunks, an inclusive Hillis-Steele scan over
// experts (double-buffered in shared memory), then each chunk's start position per expert.
__global__ void plan_offsets_kernel(int32_t* chunk_counts, long chunks, int experts, int32_t* offsets) {
  MOE_SHARED(int32_t, scan, [2][kMaxExperts]);
  const int e = threadIdx.x;
  int32_t total = 0;
  if (e < experts)
    for (long c = 0; c < chunks; ++c) total += chunk_counts[c * experts + e];
  int cur = 0;
  scan[cur][e] = total;
  __syncthreads();
  for (int off = 1; off < int(blockDim.x); off <<= 1) {
    scan[1 - cur][e] = scan[cur][e] + (e >= off ? scan[cur][e - off] : 0);
    cur = 1 - cur;
    __syncthreads();
  }
  if (e >= experts) return;
  int32_t start = scan[cur][e] - total;
  offsets[e] = start;
  if (e == experts - 1) offsets[experts] = scan[cur][e];
  for (long c = 0; c < chunks; ++c) {
    const int32_t cnt = chunk_counts[c * experts + e];
    chunk_counts[c * experts + e] = start;
    start += cnt;
  }
}

__global__ void plan_scatter_kernel(const int32_t* ids, long n, int experts, const int32_t* chunk_starts, int32_t* dest,
                                    int32_t* source) {
  MOE_SHARED(int32_t, chunk_ids, [kChunk]);
  const long i = blockIdx.x * long(kChunk) + threadIdx.x;
  const int32_t id = i < n ? ids[i] : -1;
  chunk_ids[threadIdx.x] = id;
  __syncthreads();
  if (i >= n) return;
  if (id < 0 || id >= experts) {
    dest[i] = -1;
    return;
  }
  int rank = 0;
  for (int j = 0; j < int(threadIdx.x); ++j) rank += chunk_ids[j] == id;
  const int32_t pos = chunk_starts[blockIdx.x * long(experts) + id] + rank;
  dest[i] = pos;
  source[pos] = int32_t(i);
}

template <class T>
__global__ void permute_rows_kernel(const T* x, const int32_t* source, const int32_t* offsets, int experts, int k,
                                    long dim, T* out) {
  const long p = blockIdx.x;
  if (p >= offsets[experts]) return;
  const T* src = x + (source[p] / k) * dim;
  for (long d = threadIdx.x; d < dim; d += blockDim.x) out[p * dim + d] = src[d];
}

template <class T>
__global__ void unpermute_combine_kernel(const T* expert_out, const int32_t* dest, const float* gates, int k, long dim,
                                         T* y) {
  const long t = blockIdx.x;
  for (long d = threadIdx.x; d < dim; d += blockDim.x) {
    float acc = 0.0f;
    for (int s = 0; s < k; ++s) {
      const int32_t p = dest[t * k + s];
      if (p >= 0) acc += (gates ? gates[t * k + s] : 1.0f) * to_float(expert_out[p * dim + d]);
    }
    y[t * dim + d] = from_float<T>(acc);
  }
}

// One block per assignment.
template <class T>
__global__ void unpermute_combine_backward_kernel(const T* dy, const T* expert_out, const int32_t* dest,
                                                  const float* gates, int k, long dim, T* d_expert_out,
                                                  float* d_gates) {
  const long a = blockIdx.x, t = a / k;
  const int32_t p = dest[a];
  if (p < 0) {
    if (threadIdx.x == 0 && d_gates) d_gates[a] = 0.0f;
    return;  // the whole block leaves together: no barrier is skipped by some threads only
  }
  const float g = gates ? gates[a] : 1.0f;
  float dot = 0.0f;
  for (long d = threadIdx.x; d < dim; d += blockDim.x) {
    const float dyv = to_float(dy[t * dim + d]);
    d_expert_out[p * dim + d] = from_float<T>(g * dyv);
    dot += dyv * to_float(expert_out[p * dim + d]);
  }
  dot = block_sum(dot);
  if (threadIdx.x == 0 && d_gates) d_gates[a] = dot;
}

}  // namespace

void permute_plan(const int32_t* expert_ids, long n, int experts, int32_t* offsets, int32_t* dest, int32_t* source,
                  cudaStream_t stream) {
  MOE_CHECK(experts > 0 && experts <= kMaxExperts, "cuda::permute_plan", "experts = ", experts, ", expected 1..",
            kMaxExperts);
  MOE_CHECK(n >= 0 && n < (long(1) << 31), "cuda::permute_plan", "n = ", n, " assignments do not fit int32 positions");
  if (n == 0) {
    device_memset_async(offsets, 0, sizeof(int32_t) * (experts + 1), stream);
    return;
  }
  const long chunks = ceil_div(n, kChunk);
  Workspace<int32_t> chunk_counts(chunks * experts);
  MOE_LAUNCH(chunk_count_kernel, unsigned(chunks), kChunk, sizeof(int32_t) * experts, stream, expert_ids, n, experts,
             chunk_counts.get());
  MOE_LAUNCH(plan_offsets_kernel, 1, row_block_threads(experts, kMaxExperts), 0, stream, chunk_counts.get(), chunks,
             experts, offsets);
  MOE_LAUNCH(plan_scatter_kernel, unsigned(chunks), kChunk, 0, stream, expert_ids, n, experts, chunk_counts.get(), dest,
             source);
}

template <class T>
void permute_rows(const T* x, const int32_t* source, const int32_t* offsets, int experts, long n, int k, long dim,
                  T* out, cudaStream_t stream) {
  MOE_CHECK(k >= 1 && dim > 0, "cuda::permute_rows", "k = ", k, ", dim = ", dim);
  if (n > 0)
    MOE_LAUNCH(permute_rows_kernel<device_t<T>>, unsigned(n), row_block_threads(dim), 0, stream, dev(x), source, offsets,
               experts, k, dim, dev(out));
}

template <class T>
void unpermute_combine(const T* expert_out, const int32_t* dest, const float* gates, long tokens, int k, long dim, T* y,
                       cudaStream_t stream) {
  MOE_CHECK(k >= 1 && dim > 0, "cuda::unpermute_combine", "k = ", k, ", dim = ", dim);
  if (tokens > 0)
    MOE_LAUNCH(unpermute_combine_kernel<device_t<T>>, unsigned(tokens), row_block_threads(dim), 0, stream,
               dev(expert_out), dest, gates, k, dim, dev(y));
}

template <class T>
void unpermute_combine_backward(const T* dy, const T* expert_out, const int32_t* dest, const float* gates, long tokens,
                                int k, long dim, T* d_expert_out, float* d_gates, cudaStream_t stream) {
  MOE_CHECK(k >= 1 && dim > 0, "cuda::unpermute_combine_backward", "k = ", k, ", dim = ", dim);
  if (tokens > 0)
    MOE_LAUNCH(unpermute_combine_backward_kernel<device_t<T>>, unsigned(tokens * k), row_block_threads(dim), 0, stream,
               dev(dy), dev(expert_out), dest, gates, k, dim, dev(d_expert_out), d_gates);
}

#define MOE_INSTANTIATE(T)                                                                                            \
  template void permute_rows<T>(const T*, const int32_t*, const int32_t*, int, long, int, long, T*, cudaStream_t);   \
  template void unpermute_combine<T>(const T*, const int32_t*, const float*, long, int, long, T*, cudaStream_t);     \
  template void unpermute_combine_backward<T>(const T*, const T*, const int32_t*, const float*, long, int, long, T*, \
                                              float*, cudaStream_t);
MOE_INSTANTIATE(float)
MOE_INSTANTIATE(bf16)
#undef MOE_INSTANTIATE

}  // namespace moe::cuda
