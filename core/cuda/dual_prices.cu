// Dual price kernels: the token pass finds each row's (k+1)-th largest by counting (a value is the
// m-th largest iff fewer than m values exceed it and at least m reach it); the expert pass runs
// the block radix select of radix_select.h over the column. Both exact, integer counts only.
#include <algorithm>
#include <cmath>

#include "core/cuda/block_reduce.h"
#include "core/cuda/caching_allocator.h"
#include "core/cuda/dual_prices.h"
#include "core/cuda/launch.h"
#include "core/cuda/radix_select.h"
#include "core/cuda/router.h"

namespace moe::cuda {
namespace {

constexpr int kRowWarps = 4;
constexpr int kMaxExperts = 2048;  // a token's E shifted scores per warp in shared memory

// p_i for one token per warp; the warp stages s_i - q in shared memory, each lane tests its
// candidates j = lane, lane + 32, ...; every qualifying candidate has the same value, so the
// lanes that find one may all store it.
__global__ void token_prices_kernel(const float* scores, const float* q, float* p, long tokens, int experts, int m,
                                    bool clip) {
  MOE_DYNAMIC_SHARED(float, staged);
  MOE_SHARED(float, result, [kRowWarps]);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const long t = long(blockIdx.x) * kRowWarps + warp;
  if (t >= tokens) return;  // whole warps leave together
  float* v = staged + warp * experts;
  for (int j = lane; j < experts; j += 32) v[j] = scores[t * experts + j] - q[j];
  __syncwarp();
  for (int c = lane; c < experts; c += 32) {
    const float x = v[c];
    int greater = 0, reach = 0;
    for (int j = 0; j < experts; ++j) greater += v[j] > x, reach += v[j] >= x;
    if (greater < m && reach >= m) atomicExch(&result[warp], x);
  }
  __syncwarp();
  if (lane == 0) p[t] = clip ? fmaxf(0.0f, result[warp]) : result[warp];
}

// scores_t [experts, tokens] = scores^T, so the expert pass reads its column contiguously. Token
// tiles run along grid.x (up to 2^31 - 1; grid.y stops at 65535, 2 M tokens), expert tiles along y.
__global__ void transpose_kernel(const float* in, float* out, long rows, int cols) {
  MOE_SHARED(float, tile, [32][33]);
  const long r0 = long(blockIdx.x) * 32;
  const int c0 = blockIdx.y * 32;
  for (int i = threadIdx.y; i < 32; i += blockDim.y)
    if (r0 + i < rows && c0 + int(threadIdx.x) < cols) tile[i][threadIdx.x] = in[(r0 + i) * cols + c0 + threadIdx.x];
  __syncthreads();
  for (int i = threadIdx.y; i < 32; i += blockDim.y)
    if (c0 + i < cols && r0 + threadIdx.x < rows) out[long(c0 + i) * rows + r0 + threadIdx.x] = tile[threadIdx.x][i];
}

// q_e = the m-th largest of scores_t[e, i] - p_i over the tokens i.
__global__ void expert_prices_kernel(const float* scores_t, const float* p, float* q, long tokens, int m, bool clip) {
  const float* col = scores_t + long(blockIdx.x) * tokens;
  const float v = block_nth_largest([&](long i) { return col[i] - p[i]; }, tokens, unsigned(m));
  if (threadIdx.x == 0) q[blockIdx.x] = clip ? fmaxf(0.0f, v) : v;
}

__global__ void subtract_prices_kernel(const float* scores, const float* q, float* out, long tokens, int experts) {
  const long n = tokens * experts;
  for (long i = blockIdx.x * long(blockDim.x) + threadIdx.x; i < n; i += long(gridDim.x) * blockDim.x)
    out[i] = scores[i] - q[i % experts];
}

// One block: thread 0 sums next in expert order (a fixed order: the same double as the CPU's).
__global__ void quantile_beta_kernel(float* beta, const float* target, int experts, double rate) {
  MOE_SHARED(double, mean, [1]);
  if (threadIdx.x == 0) {
    double m = 0;
    for (int j = 0; j < experts; ++j) m += double(beta[j]) + rate * (double(target[j]) - double(beta[j]));
    mean[0] = m / double(experts);
  }
  __syncthreads();
  for (int j = threadIdx.x; j < experts; j += blockDim.x)
    beta[j] = float(double(beta[j]) + rate * (double(target[j]) - double(beta[j])) - mean[0]);
}

}  // namespace

void quantile_beta_update(float* beta, const float* target, int experts, double rate, cudaStream_t stream) {
  MOE_CHECK(experts >= 1 && experts <= kMaxExperts, "cuda::quantile_beta_update", "experts = ", experts,
            ", expected 1..", kMaxExperts);
  MOE_LAUNCH(quantile_beta_kernel, 1, row_block_threads(experts, 1024), 0, stream, beta, target, experts, rate);
}

void dual_price_iterations(const float* scores, long tokens, int experts, int k, long cap, int iters, bool clip,
                           float* q, cudaStream_t stream) {
  const char* op = "cuda::dual_price_iterations";
  MOE_CHECK(tokens > 0 && experts > 0 && experts <= kMaxExperts, op, "scores [", tokens, ", ", experts,
            "]: expected tokens >= 1 and 1 <= experts <= ", kMaxExperts);
  MOE_CHECK(k >= 1 && cap >= 1 && iters >= 0, op, "k = ", k, ", cap = ", cap, ", iters = ", iters,
            ": expected k >= 1, cap >= 1, iters >= 0");
  if (iters == 0) return;
  const int row_m = k + 1 < experts ? k + 1 : experts;
  const int col_m = int(cap + 1 < tokens ? cap + 1 : tokens);
  // Expert pass: about 16 tokens per thread, 32 to 256 threads.
  const unsigned col_threads = unsigned(std::min<long>(256, std::max<long>(32, (tokens / 16 + 31) / 32 * 32)));
  Workspace<float> p{size_t(tokens)}, scores_t{size_t(tokens) * experts};
  MOE_LAUNCH(transpose_kernel, dim3(ceil_div(tokens, 32), ceil_div(experts, 32)), dim3(32, 8), 0, stream, scores,
             scores_t.get(), tokens, experts);
  for (int it = 0; it < iters; ++it) {
    MOE_LAUNCH(token_prices_kernel, ceil_div(tokens, kRowWarps), kRowWarps * 32,
               sizeof(float) * size_t(kRowWarps) * experts, stream, scores, static_cast<const float*>(q), p.get(),
               tokens, experts, row_m, clip);
    MOE_LAUNCH(expert_prices_kernel, unsigned(experts), col_threads, 0, stream,
               static_cast<const float*>(scores_t.get()), static_cast<const float*>(p.get()), q, tokens, col_m, clip);
  }
}

void price_shifted_topk(const float* scores, const float* q, long tokens, int experts, int k, float* values,
                        int32_t* indices, cudaStream_t stream) {
  MOE_CHECK(tokens > 0 && experts > 0 && k >= 1 && k <= experts, "cuda::price_shifted_topk", "scores [", tokens, ", ",
            experts, "] with k = ", k);
  Workspace<float> shifted{size_t(tokens) * experts};
  unsigned blocks = ceil_div(size_t(tokens) * experts, 256);
  MOE_LAUNCH(subtract_prices_kernel, blocks > 4096 ? 4096 : blocks, 256, 0, stream, scores, q, shifted.get(), tokens,
             experts);
  router_topk(shifted.get(), values, indices, tokens, experts, k, stream);
}

}  // namespace moe::cuda
