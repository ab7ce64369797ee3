// Dual price kernels, two launches per iteration: the token pass finds each row's (k+1)-th largest
// by peeling distinct values off the top with warp (max, count) reductions (its first launch also
// writes the transposed scores for the expert pass); the expert pass runs the block radix select
// of radix_select.h over the column (one 1024-thread block per expert at 16 Ki tokens, the column
// in registers). Both exact, integer counts only: bit-identical reruns. The price-shifted top-k is
// one kernel. So I iterations take 2 I launches and the selection one.
#include <algorithm>
#include <cmath>

#include "core/cuda/block_reduce.h"
#include "core/cuda/caching_allocator.h"
#include "core/cuda/dual_prices.h"
#include "core/cuda/launch.h"
#include "core/cuda/radix_select.h"
#include "core/cuda/row_topk.h"

namespace moe::cuda {
namespace {

constexpr int kTokenThreads = 512;       // the token pass: 16 warps per block, 2 tokens each
constexpr int kTileTokens = 32;          // tokens per block of the token pass (a 128-byte transposed run)
constexpr long kTokenTileFloats = 8448;  // its staged rows [tile, E + 1] and q: 33 KiB at most
constexpr int kMaxExperts = 2048;        // at least one staged row
constexpr int kColCached = 16;           // column values per thread of the expert pass kept in registers

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

// The m-th largest of v(0) .. v(n - 1) for a whole warp (every lane gets it): peels distinct
// values off the top, one warp (max, count) reduction each, until the count reaches m: the value
// where it does is the m-th largest (ties counted with their multiplicity). At most m rounds, each
// n / 32 evaluations of v per lane.
template <class Value>
__device__ __forceinline__ float warp_nth_largest(Value v, int n, int m) {
  float bound = INFINITY;
  for (int remaining = m;;) {  // warp-uniform: every lane sees the same reductions
    float mx = -INFINITY;
    int count = 0;
    for (int j = threadIdx.x % 32; j < n; j += 32) {
      const float x = v(j);
      if (x < bound && x > mx) {
        mx = x;
        count = 1;
      } else if (x < bound && x == mx) {
        ++count;
      }
    }
    warp_max_count(mx, count);
    if (count >= remaining || count == 0) return mx;  // count 0: only -inf (or NaN) left; m <= n makes it rare
    remaining -= count;
    bound = mx;
  }
}

// The token pass over a tile of `tile` tokens per block: the tile's rows are staged in shared
// memory (coalesced), q too; one warp per token takes p_t = the m-th largest of s_t - q. When
// scores_t is given (the first iteration) the block also writes its tile transposed into
// scores_t [experts, tokens], so the expert pass reads its column contiguously without a
// transpose kernel of its own. s - q is formed on the fly: the tile stays the scores.
__global__ void token_prices_kernel(const float* scores, const float* q, float* p, float* scores_t, long tokens,
                                    int experts, int tile, int m, bool clip) {
  MOE_DYNAMIC_SHARED(float, smem);
  float* qs = smem;
  float* rows_s = smem + experts;
  const int stride = experts + 1;  // padded: the transposed reads go down a column without bank conflicts
  const long t0 = long(blockIdx.x) * tile;
  const int rows = tokens - t0 < tile ? int(tokens - t0) : tile;
  for (int j = threadIdx.x; j < experts; j += blockDim.x) qs[j] = q[j];
  const float* src = scores + t0 * experts;
  for (int i = threadIdx.x; i < rows * experts; i += blockDim.x) rows_s[(i / experts) * stride + i % experts] = src[i];
  __syncthreads();
  if (scores_t)
    for (int i = threadIdx.x; i < rows * experts; i += blockDim.x) {
      const int e = i / rows, r = i % rows;
      scores_t[long(e) * tokens + t0 + r] = rows_s[r * stride + e];
    }
  for (int r = int(threadIdx.x) / 32; r < rows; r += int(blockDim.x) / 32) {
    const float* v = rows_s + r * stride;
    const float result = warp_nth_largest([&](int j) { return v[j] - qs[j]; }, experts, m);
    if (threadIdx.x % 32 == 0) p[t0 + r] = clip ? fmaxf(0.0f, result) : result;
  }
}

// q_e = the m-th largest of scores_t[e, i] - p_i over the tokens i. Launched with up to 1024
// threads: the bound keeps the registers (kColCached keys each) within the register file.
__global__ void __launch_bounds__(1024)
    expert_prices_kernel(const float* scores_t, const float* p, float* q, long tokens, int m, bool clip) {
  const float* col = scores_t + long(blockIdx.x) * tokens;
  const float v = block_nth_largest<kColCached>([&](long i) { return col[i] - p[i]; }, tokens, unsigned(m));
  if (threadIdx.x == 0) q[blockIdx.x] = clip ? fmaxf(0.0f, v) : v;
}

// BIP's selection, one thread per token: the top-k of s_t - q (row_topk.h's order).
__global__ void price_topk_kernel(const float* scores, const float* q, float* values, int32_t* indices, long tokens,
                                  int experts, int k) {
  const long t = blockIdx.x * long(blockDim.x) + threadIdx.x;
  if (t >= tokens) return;
  const float* row = scores + t * experts;
  row_topk([&](int e) { return row[e] - q[e]; }, experts, k, [&](int s, float v, int e) {
    values[t * k + s] = v;
    indices[t * k + s] = e;
  });
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
  // 1024 threads; the token pass: one warp per token, `tile` tokens per block (fewer when E > 255).
  const unsigned col_threads = row_block_threads(ceil_div(tokens, kColCached), 1024);
  const int tile = int(std::clamp<long>(kTokenTileFloats / (experts + 1) - 1, 1, kTileTokens));
  const size_t token_smem = sizeof(float) * (size_t(experts) + size_t(tile) * (experts + 1));  // < 33 KiB
  Workspace<float> p{size_t(tokens)}, scores_t{size_t(tokens) * experts};
  for (int it = 0; it < iters; ++it) {
    MOE_LAUNCH(token_prices_kernel, ceil_div(tokens, tile), kTokenThreads, token_smem, stream, scores,
               static_cast<const float*>(q), p.get(), it == 0 ? scores_t.get() : nullptr, tokens, experts, tile,
               row_m, clip);
    MOE_LAUNCH(expert_prices_kernel, unsigned(experts), col_threads, 0, stream,
               static_cast<const float*>(scores_t.get()), static_cast<const float*>(p.get()), q, tokens, col_m, clip);
  }
}

void price_shifted_topk(const float* scores, const float* q, long tokens, int experts, int k, float* values,
                        int32_t* indices, cudaStream_t stream) {
  MOE_CHECK(tokens > 0 && experts > 0 && k >= 1 && k <= experts, "cuda::price_shifted_topk", "scores [", tokens, ", ",
            experts, "] with k = ", k);
  MOE_LAUNCH(price_topk_kernel, ceil_div(tokens, 128), 128, 0, stream, scores, q, values, indices, tokens, experts, k);
}

}  // namespace moe::cuda
