// Selection kernels: expert choice by one block per expert (the block radix select finds the C-th
// largest score, then ties at that value go to the lowest tokens), top-p by one thread per token
// walking its experts in (score desc, index asc) order, and the entropy loss with a one-block mean.
#include <cmath>

#include "core/cuda/block_reduce.h"
#include "core/cuda/caching_allocator.h"
#include "core/cuda/launch.h"
#include "core/cuda/radix_select.h"
#include "core/cuda/selection.h"

namespace moe::cuda {
namespace {

constexpr int kThreads = 128;
constexpr float kLogEps = 1e-30f;

// Expert choice runs one block per expert, so few blocks: each is as wide as a block gets and
// keeps up to 16 of its thread's scores in registers through the select's three passes (16384
// tokens read once). Ties at the threshold go to the lowest tokens: each thread owns a contiguous
// run of tokens, and a block scan of the ties per run tells every thread how many lower tokens
// tie, so the ties are ranked in parallel (one thread walking the tokens took up to 0.4 ms per
// call on the H100 when a few tokens tied, e.g. identical hidden states of sequence starts).
constexpr int kChoiceThreads = 1024, kChoiceCached = 16;

__global__ void __launch_bounds__(kChoiceThreads)
    expert_choice_kernel(const float* scores, long tokens, int experts, long capacity, uint8_t* chosen) {
  MOE_SHARED(unsigned, above_total, [1]);  // scores above the threshold
  const int e = blockIdx.x;
  auto value = [&](long t) { return scores[t * experts + e]; };
  const float v = block_nth_largest<kChoiceCached>(value, tokens, unsigned(capacity));
  const long run = (tokens + blockDim.x - 1) / blockDim.x;
  const long begin = threadIdx.x * run, end = begin + run < tokens ? begin + run : tokens;
  if (threadIdx.x == 0) *above_total = 0;
  __syncthreads();
  unsigned above = 0, equal = 0;
  for (long t = begin; t < end; ++t) {
    const float s = value(t);
    above += s > v;
    equal += s == v;
  }
  if (above) atomicAdd(above_total, above);
  unsigned ties_before = block_exclusive_sum(equal);  // ties at lower tokens (its barriers publish above_total)
  const unsigned ties_taken = unsigned(capacity) - *above_total;
  for (long t = begin; t < end; ++t) {
    const float s = value(t);
    bool take = s > v;
    if (s == v) take = ties_before++ < ties_taken;
    chosen[t * experts + e] = take;
  }
}

// (a, ia) comes before (b, ib) in the ranking: higher score, then lower index.
__device__ __forceinline__ bool ranks_before(float a, int ia, float b, int ib) { return a > b || (a == b && ia < ib); }

__global__ void top_p_kernel(const float* scores, long tokens, int experts, double p, int32_t* ranked,
                             int32_t* counts) {
  const long t = blockIdx.x * long(blockDim.x) + threadIdx.x;
  if (t >= tokens) return;
  const float* s = scores + t * experts;
  float last = INFINITY;
  int last_index = -1, taken = 0;
  double cum = 0;
  while (taken < experts && (taken == 0 || cum < p)) {
    int best = -1;
    for (int j = 0; j < experts; ++j)  // the best expert ranked after the last one taken
      if (ranks_before(last, last_index, s[j], j) && (best < 0 || ranks_before(s[j], j, s[best], best))) best = j;
    ranked[t * experts + taken++] = best;
    last = s[best], last_index = best;
    cum += double(last);
  }
  for (int r = taken; r < experts; ++r) ranked[t * experts + r] = -1;
  counts[t] = taken;
}

__global__ void row_entropy_kernel(const float* scores, long tokens, int experts, float* entropy) {
  const long t = blockIdx.x * long(blockDim.x) + threadIdx.x;
  if (t >= tokens) return;
  float h = 0.0f;
  for (int j = 0; j < experts; ++j) {
    const float s = scores[t * experts + j];
    h -= s * logf(s + kLogEps);
  }
  entropy[t] = h;
}

__global__ void mean_kernel(const float* v, long n, float* out) {
  float s = 0.0f;
  for (long i = threadIdx.x; i < n; i += blockDim.x) s += v[i];
  s = block_sum(s);
  if (threadIdx.x == 0) *out = s / float(n);
}

__global__ void entropy_backward_kernel(const float* scores, float dloss, long tokens, int experts, float* dscores) {
  const long n = tokens * experts;
  for (long i = blockIdx.x * long(blockDim.x) + threadIdx.x; i < n; i += long(gridDim.x) * blockDim.x) {
    const float s = scores[i];
    dscores[i] = -dloss * (logf(s + kLogEps) + s / (s + kLogEps)) / float(tokens);
  }
}

void check_shape(const char* op, long tokens, int experts) {
  MOE_CHECK(tokens > 0 && experts > 0, op, "bad shape [", tokens, ", ", experts, "]: expected tokens, experts >= 1");
}

}  // namespace

void expert_choice_select(const float* scores, long tokens, int experts, long capacity, uint8_t* chosen,
                          cudaStream_t stream) {
  check_shape("cuda::expert_choice_select", tokens, experts);
  MOE_CHECK(capacity >= 1 && capacity <= tokens, "cuda::expert_choice_select", "capacity ", capacity,
            " must be in [1, tokens = ", tokens, "]");
  MOE_LAUNCH(expert_choice_kernel, unsigned(experts), row_block_threads(tokens / 8, kChoiceThreads), 0, stream, scores, tokens,
             experts, capacity, chosen);
}

void top_p_select(const float* scores, long tokens, int experts, double p, int32_t* ranked, int32_t* counts,
                  cudaStream_t stream) {
  check_shape("cuda::top_p_select", tokens, experts);
  MOE_LAUNCH(top_p_kernel, ceil_div(tokens, kThreads), kThreads, 0, stream, scores, tokens, experts, p, ranked, counts);
}

void routing_entropy_forward(const float* scores, long tokens, int experts, float* loss, cudaStream_t stream) {
  check_shape("cuda::routing_entropy_forward", tokens, experts);
  Workspace<float> entropy{size_t(tokens)};
  MOE_LAUNCH(row_entropy_kernel, ceil_div(tokens, kThreads), kThreads, 0, stream, scores, tokens, experts,
             entropy.get());
  MOE_LAUNCH(mean_kernel, 1, row_block_threads(tokens, 1024), 0, stream, static_cast<const float*>(entropy.get()),
             tokens, loss);
}

void routing_entropy_backward(const float* scores, float dloss, long tokens, int experts, float* dscores,
                              cudaStream_t stream) {
  check_shape("cuda::routing_entropy_backward", tokens, experts);
  unsigned blocks = ceil_div(size_t(tokens) * experts, 256);
  MOE_LAUNCH(entropy_backward_kernel, blocks > 4096 ? 4096 : blocks, 256, 0, stream, scores, dloss, tokens, experts,
             dscores);
}

}  // namespace moe::cuda
