// Dual price kernels, two launches per iteration: the token pass finds each row's (k+1)-th largest
// by peeling distinct values off the top with warp (max, count) reductions; the expert pass runs
// the block radix select of radix_select.h over the column (one 1024-thread block per expert at
// 16 Ki tokens, the column in registers). Both exact, integer counts only: bit-identical reruns.
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

constexpr int kRowWarps = 4;         // tokens in flight per block (E floats each: 32 KiB at most)
constexpr int kMaxRowBlocks = 2048;  // the token pass strides over the rest
constexpr int kMaxExperts = 2048;    // a token's E shifted scores per warp in shared memory
constexpr int kColCached = 16;       // column values per thread of the expert pass kept in registers

// (max, count of it) over a warp: the count sums over the lanes holding the largest max (compared
// as floats, so -0 and +0 count together, as the CPU's comparisons do); integer counts, so the
// result does not depend on the order. The pair travels as one 64-bit shuffle.
__device__ __forceinline__ void warp_max_count(float& mx, int& count) {
  for (int o = 16; o > 0; o >>= 1) {
    const unsigned long long mine = (static_cast<unsigned long long>(__float_as_uint(mx)) << 32) | unsigned(count);
    const unsigned long long other = __shfl_xor_sync(0xffffffffu, mine, o);
    const float other_mx = __uint_as_float(unsigned(other >> 32));
    const int other_count = int(other & 0xffffffffull);
    if (other_mx > mx) {
      mx = other_mx;
      count = other_count;
    } else if (other_mx == mx) {
      count += other_count;
    }
  }
}

// p_i for one token per warp (tokens strided over the grid): the warp stages s_i - q in shared
// memory, then peels off distinct values from the top, one warp (max, count) reduction each, until
// the count reaches m: the value where it does is the m-th largest (ties counted with their
// multiplicity). At most m rounds, each a pass of E / 32 shared reads per lane.
__global__ void token_prices_kernel(const float* scores, const float* q, float* p, long tokens, int experts, int m,
                                    bool clip) {
  MOE_DYNAMIC_SHARED(float, staged);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float* v = staged + warp * experts;
  for (long t = long(blockIdx.x) * kRowWarps + warp; t < tokens; t += long(gridDim.x) * kRowWarps) {
    for (int j = lane; j < experts; j += 32) v[j] = scores[t * experts + j] - q[j];
    __syncwarp();
    float bound = INFINITY, result = -INFINITY;
    for (int remaining = m;;) {  // warp-uniform: every lane sees the same reductions
      float mx = -INFINITY;
      int count = 0;
      for (int j = lane; j < experts; j += 32) {
        const float x = v[j];
        if (x < bound && x > mx) {
          mx = x;
          count = 1;
        } else if (x < bound && x == mx) {
          ++count;
        }
      }
      warp_max_count(mx, count);
      if (count >= remaining || count == 0) {  // count 0: only -inf (or NaN) left; m <= E makes it rare
        result = mx;
        break;
      }
      remaining -= count;
      bound = mx;
    }
    __syncwarp();  // the row's readers are done before the next token's staging
    if (lane == 0) p[t] = clip ? fmaxf(0.0f, result) : result;
  }
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

// q_e = the m-th largest of scores_t[e, i] - p_i over the tokens i. Launched with up to 1024
// threads: the bound keeps the registers (kColCached keys each) within the register file.
__global__ void __launch_bounds__(1024)
    expert_prices_kernel(const float* scores_t, const float* p, float* q, long tokens, int m, bool clip) {
  const float* col = scores_t + long(blockIdx.x) * tokens;
  const float v = block_nth_largest<kColCached>([&](long i) { return col[i] - p[i]; }, tokens, unsigned(m));
  if (threadIdx.x == 0) q[blockIdx.x] = clip ? fmaxf(0.0f, v) : v;
}

__global__ void negate_kernel(const float* q, float* out, int experts) {
  for (int j = threadIdx.x; j < experts; j += blockDim.x) out[j] = -q[j];
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
  // Expert pass: kColCached tokens per thread (all of them in registers up to 16 Ki tokens), 32 to
  // 1024 threads; the token pass: one warp per token, strided beyond kMaxRowBlocks blocks.
  const unsigned col_threads = row_block_threads(ceil_div(tokens, kColCached), 1024);
  const unsigned row_blocks = unsigned(std::min<long>(kMaxRowBlocks, ceil_div(tokens, kRowWarps)));
  Workspace<float> p{size_t(tokens)}, scores_t{size_t(tokens) * experts};
  MOE_LAUNCH(transpose_kernel, dim3(ceil_div(tokens, 32), ceil_div(experts, 32)), dim3(32, 8), 0, stream, scores,
             scores_t.get(), tokens, experts);
  for (int it = 0; it < iters; ++it) {
    MOE_LAUNCH(token_prices_kernel, row_blocks, kRowWarps * 32,
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
  // s - q is s + (-q) exactly in IEEE arithmetic (signed zeros included), so the biased top-k
  // ranks and returns the shifted scores without a [tokens, experts] pass of its own.
  Workspace<float> minus_q{size_t(experts)};
  MOE_LAUNCH(negate_kernel, 1, row_block_threads(experts, 1024), 0, stream, q, minus_q.get(), experts);
  router_topk_biased(scores, minus_q.get(), values, indices, tokens, experts, k, stream);
}

}  // namespace moe::cuda
