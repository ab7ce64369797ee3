// Sinkhorn kernels. One iteration = two launches:
//  - sinkhorn_chunk_kernel: block b takes tokens [b C, b C + C) and stages their x in shared
//    memory (coalesced); one thread per row computes the row max and log d0 (a two-pass logsumexp
//    against log d1, also in shared memory); then G = blockDim / E thread groups (one thread per
//    (group, expert), rows g, g + G, ...) take the (max, sum exp) of (x - row max) / xi + log d0
//    and merge in group order -> partial (max, sum) [chunks, E].
//  - sinkhorn_combine_kernel: one block per expert; thread j merges the chunk partials j, j + B,
//    ... in chunk order, then the block merges its threads' (max, sum) in a fixed shuffle tree ->
//    log d1 and the expert's change; the last expert block to finish (an integer ticket) sums the
//    changes in expert order, counts the iteration and sets the converged flag.
// Precision: the log-domain values (log K / xi, log d0, log d1, the running maxima) are doubles,
// because |x - max| / xi reaches thousands (logits +/-80 at xi 0.05) where an fp32 log keeps only
// ~1e-4 absolute; each exponent is a difference of those doubles, taken by expf, and the sums of
// exponentials are fp32 (at most a chunk's rows, each <= 1).
// Every kernel returns at once when the flag is set, so the host queues iterations ahead and reads
// the flag once per batch (2, 4, 8, 8, ... iterations). No atomics and no warp shuffles in the
// loops but the combine's fixed-order tree: results are bit-identical run to run. (The combine was
// one block before: its serial walk over the partials in L2 took most of an iteration.)
#include <algorithm>
#include <cmath>

#include "core/cuda/block_reduce.h"
#include "core/cuda/caching_allocator.h"
#include "core/cuda/launch.h"
#include "core/cuda/memory.h"
#include "core/cuda/sinkhorn.h"

namespace moe::cuda {
namespace {

constexpr unsigned kChunkThreads = 128;    // threads of the chunk kernel (4 warps)
constexpr unsigned kCombineThreads = 256;  // threads per expert of the combine kernel, at most
constexpr long kTileFloats = 8192;          // shared memory for the chunk's x: 32 KiB

struct State {
  int converged;
  int iterations;
  float last_change;
  unsigned combined;  // expert blocks of the running combine done (the last one resets it)
};

// (m, s) with m = max_i v(i) and s = sum_i exp(v(i) - m) over i = begin, begin + step, ... < end;
// (-inf, 0) when empty. Two passes rather than an online rescale: each pass's steps are
// independent but for a max or an add, so the exponentials pipeline instead of forming one chain
// of dependent expf calls (the rows and columns here are short and sit in shared memory).
template <class Value>
__device__ __forceinline__ void max_sum_exp(Value v, int begin, int end, int step, double& m, float& s) {
  m = -INFINITY;
  for (int i = begin; i < end; i += step) m = fmax(m, v(i));
  s = 0.0f;
  if (m == -INFINITY) return;
  for (int i = begin; i < end; i += step) s += expf(float(v(i) - m));
}

// Merges n partials (max, sum) at stride `stride` in index order into (m, s).
__device__ __forceinline__ void merge_partials(const double* pm, const float* ps, int n, long stride, double& m,
                                               float& s) {
  m = -INFINITY;
  for (int i = 0; i < n; ++i) m = fmax(m, pm[i * stride]);
  s = 0.0f;
  for (int i = 0; i < n; ++i) {
    const float si = ps[i * stride];
    if (si > 0.0f) s += si * expf(float(pm[i * stride] - m));
  }
}

__global__ void sinkhorn_init_kernel(double* log_d1, int experts, State* state) {
  for (int e = threadIdx.x; e < experts; e += blockDim.x) log_d1[e] = 0.0;  // d1 = 1
  if (threadIdx.x == 0) {
    state->converged = 0;
    state->iterations = 0;
    state->last_change = 0.0f;
    state->combined = 0;
  }
}

// Shared memory: doubles log d1 [E], log d0 [C], partial max [G E] (when G > 1); then floats row
// max [C], partial sum [G E] (when G > 1) and the chunk's x [C, E + 1] (padded: the row step's
// threads read down rows, the column step's across a row, both without bank conflicts).
__global__ void sinkhorn_chunk_kernel(const float* x, const double* log_d1, float* row_max, double* log_d0,
                                      double* part_max, float* part_sum, long tokens, int experts, int chunk,
                                      double inv_xi, double log_tokens, const State* state) {
  if (state->converged) return;
  MOE_DYNAMIC_SHARED(double, smem);
  const int groups = int(blockDim.x) / experts > 1 ? int(blockDim.x) / experts : 1;
  const int gsize = groups > 1 ? groups * experts : 0;
  double* ld1 = smem;
  double* ld0 = ld1 + experts;
  double* gmax = ld0 + chunk;
  float* rmax = reinterpret_cast<float*>(gmax + gsize);
  float* gsum = rmax + chunk;
  float* tile = gsum + gsize;
  const int stride = experts + 1;
  const long t0 = long(blockIdx.x) * chunk;
  const int rows = tokens - t0 < chunk ? int(tokens - t0) : chunk;
  for (int e = threadIdx.x; e < experts; e += blockDim.x) ld1[e] = log_d1[e];
  const float* src = x + t0 * experts;  // the chunk's rows are contiguous: coalesced loads
  for (int i = threadIdx.x; i < rows * experts; i += blockDim.x) tile[(i / experts) * stride + i % experts] = src[i];
  __syncthreads();

  // log d0[t] = -log T - logsumexp_e((x[t,e] - max) / xi + log d1[e]), one thread per row (no warp
  // exchanges: a chunk's rows are few and short).
  for (int r = threadIdx.x; r < rows; r += blockDim.x) {
    const float* row = tile + r * stride;
    float mx = -INFINITY;
    for (int e = 0; e < experts; ++e) mx = fmaxf(mx, row[e]);
    double m;
    float s;
    max_sum_exp([&](int e) { return double(row[e] - mx) * inv_xi + ld1[e]; }, 0, experts, 1, m, s);
    const double d0 = -log_tokens - (m + log(double(s)));
    rmax[r] = mx;
    ld0[r] = d0;
    row_max[t0 + r] = mx;
    log_d0[t0 + r] = d0;
  }
  __syncthreads();

  // Per expert: (max, sum exp) of (x - max) / xi + log d0 over the chunk's rows, split
  // over `groups` threads per expert (rows g, g + G, ...) and merged in group order.
  double* out_max = part_max + long(blockIdx.x) * experts;
  float* out_sum = part_sum + long(blockIdx.x) * experts;
  for (int p = threadIdx.x; p < groups * experts; p += blockDim.x) {
    const int e = p % experts, g = p / experts;
    double m;
    float s;
    max_sum_exp([&](int r) { return double(tile[r * stride + e] - rmax[r]) * inv_xi + ld0[r]; }, g, rows, groups, m,
                s);
    if (groups == 1) {
      out_max[e] = m;
      out_sum[e] = s;
    } else {
      gmax[p] = m;
      gsum[p] = s;
    }
  }
  if (groups == 1) return;
  __syncthreads();
  for (int e = threadIdx.x; e < experts; e += blockDim.x)
    merge_partials(gmax + e, gsum + e, groups, experts, out_max[e], out_sum[e]);
}

// (m, s) := the merge of (m, s) and (om, os): the same bits either way round, so a butterfly
// leaves every lane with the same result. An empty partial (s = 0) has m = -inf and adds nothing.
__device__ __forceinline__ void merge_pair(double& m, float& s, double om, float os) {
  const double mm = fmax(m, om);
  s = (s > 0.0f ? s * expf(float(m - mm)) : 0.0f) + (os > 0.0f ? os * expf(float(om - mm)) : 0.0f);
  m = mm;
}
__device__ __forceinline__ void warp_merge(double& m, float& s) {
  for (int o = 16; o > 0; o >>= 1)
    merge_pair(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
}

// log d1[e] = -log E - logsumexp over chunks of the partials, e = blockIdx.x; change[e] =
// |d1_new / d1_old - 1|. Thread j merges chunks j, j + blockDim, ... in order; the block merges
// the threads in a fixed tree. The last expert block done takes the mean change in expert order.
__global__ void sinkhorn_combine_kernel(const double* part_max, const float* part_sum, int chunks, double* log_d1,
                                        float* change, int experts, double log_experts, float tol, State* state) {
  if (state->converged) return;
  MOE_SHARED(double, warps_m, [32]);  // each warp's merged (max, sum)
  MOE_SHARED(float, warps_s, [32]);
  const int e = blockIdx.x, lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
  const int j = threadIdx.x, stride = blockDim.x;
  double m;
  float s;
  merge_partials(part_max + long(j) * experts + e, part_sum + long(j) * experts + e,
                 chunks > j ? (chunks - j + stride - 1) / stride : 0, long(stride) * experts, m, s);
  warp_merge(m, s);
  if (lane == 0) warps_m[warp] = m, warps_s[warp] = s;
  __syncthreads();
  if (warp != 0) return;
  m = lane < nwarps ? warps_m[lane] : -INFINITY;
  s = lane < nwarps ? warps_s[lane] : 0.0f;
  warp_merge(m, s);
  if (lane != 0) return;
  const double updated = -log_experts - (m + log(double(s)));
  change[e] = float(fabs(expm1(updated - log_d1[e])));
  log_d1[e] = updated;
  __threadfence();  // change[e] is visible before the ticket says so
  if (atomicAdd(&state->combined, 1u) != unsigned(experts) - 1) return;
  __threadfence();
  const volatile float* changes = change;  // written by other blocks: past this SM's L1
  float c = 0.0f;
  for (int i = 0; i < experts; ++i) c += changes[i];
  const float mean = c / float(experts);
  state->combined = 0;
  state->iterations += 1;
  state->last_change = mean;
  if (mean < tol) state->converged = 1;
}

__global__ void sinkhorn_plan_kernel(const float* x, const float* row_max, const double* log_d0,
                                     const double* log_d1, float* plan, long tokens, int experts, double inv_xi) {
  const long n = tokens * experts;
  for (long i = blockIdx.x * long(blockDim.x) + threadIdx.x; i < n; i += long(gridDim.x) * blockDim.x) {
    const long t = i / experts;
    plan[i] = expf(float(double(x[i] - row_max[t]) * inv_xi + log_d0[t] + log_d1[i - t * experts]));
  }
}

}  // namespace

long sinkhorn_chunk_tokens(long tokens, int experts) {
  const long per_block = (tokens + 255) / 256;  // about 256 blocks
  const long chunk = std::min<long>(256, std::max<long>(32, (per_block + 31) / 32 * 32));
  const long fits = kTileFloats / (long(experts) + 1);  // the chunk's x in shared memory
  return std::max<long>(1, std::min(chunk, fits));
}

SinkhornStats sinkhorn_scalings(const float* x, long tokens, int experts, float xi, int max_iters, float tol,
                                float* row_max, double* log_d0, double* log_d1, cudaStream_t stream, int batch) {
  MOE_CHECK(tokens > 0 && experts > 0, "cuda::sinkhorn_plan", "bad shape [", tokens, ", ", experts, "]");
  MOE_CHECK(xi > 0 && max_iters >= 1 && tol >= 0 && batch >= 1, "cuda::sinkhorn_plan", "xi = ", xi,
            ", max_iters = ", max_iters, ", tol = ", tol, ", batch = ", batch,
            ": expected xi > 0, max_iters >= 1, tol >= 0, batch >= 1");
  const int chunk = int(sinkhorn_chunk_tokens(tokens, experts));
  const long chunks = (tokens + chunk - 1) / chunk;
  MOE_CHECK(chunks < (1L << 31), "cuda::sinkhorn_plan", tokens, " tokens: too many chunks");
  Workspace<double> part_max{size_t(chunks) * experts};
  Workspace<float> part_sum{size_t(chunks) * experts}, change{size_t(experts)};
  Workspace<State> state(1);
  const double inv_xi = 1.0 / double(xi), log_t = std::log(double(tokens)), log_e = std::log(double(experts));
  const int groups = std::max(1, int(kChunkThreads) / experts);
  const size_t gsize = groups > 1 ? size_t(groups) * experts : 0;
  const size_t chunk_smem = (size_t(experts) + size_t(chunk) + gsize) * sizeof(double) +
                            (size_t(chunk) + gsize + size_t(chunk) * (experts + 1)) * sizeof(float);
  const unsigned combine_threads = row_block_threads(chunks, kCombineThreads);
  MOE_CHECK(chunk_smem <= 48 * 1024, "cuda::sinkhorn_plan", experts, " experts: too many for shared memory");
  MOE_LAUNCH(sinkhorn_init_kernel, 1, kCombineThreads, 0, stream, log_d1, experts, state.get());
  SinkhornStats stats;
  State host{};
  // Batches of 2, 4, ... up to `batch` iterations: a plan that converges in 2 (router logits at
  // xi 1) waits for one read and queues no idle kernels; a slow one reads once per `batch`.
  for (int launched = 0, size = std::min(2, batch); launched < max_iters; size = std::min(2 * size, batch)) {
    const int n = std::min(size, max_iters - launched);
    for (int i = 0; i < n; ++i) {
      MOE_LAUNCH(sinkhorn_chunk_kernel, unsigned(chunks), kChunkThreads, chunk_smem, stream, x,
                 static_cast<const double*>(log_d1), row_max, log_d0, part_max.get(), part_sum.get(), tokens, experts,
                 chunk, inv_xi, log_t, static_cast<const State*>(state.get()));
      MOE_LAUNCH(sinkhorn_combine_kernel, unsigned(experts), combine_threads, 0, stream,
                 static_cast<const double*>(part_max.get()), static_cast<const float*>(part_sum.get()), int(chunks),
                 log_d1, change.get(), experts, log_e, tol, state.get());
    }
    launched += n;
    copy_to_host(&host, state.get(), sizeof(State));  // the one sync of the batch
    if (host.converged) break;
  }
  stats.iterations = host.iterations;
  stats.last_change = host.last_change;
  return stats;
}

void sinkhorn_plan_from_scalings(const float* x, const float* row_max, const double* log_d0, const double* log_d1,
                                 long tokens, int experts, float xi, float* plan, cudaStream_t stream) {
  unsigned blocks = ceil_div(size_t(tokens) * experts, 256);
  if (blocks > 4096) blocks = 4096;
  MOE_LAUNCH(sinkhorn_plan_kernel, blocks, 256, 0, stream, x, row_max, log_d0, log_d1, plan, tokens, experts,
             1.0 / double(xi));
}

int sinkhorn_plan(const float* x, long tokens, int experts, float xi, int max_iters, float tol, float* plan,
                  cudaStream_t stream) {
  MOE_CHECK(tokens > 0 && experts > 0, "cuda::sinkhorn_plan", "bad shape [", tokens, ", ", experts, "]");
  Workspace<float> row_max{size_t(tokens)};
  Workspace<double> log_d0{size_t(tokens)}, log_d1{size_t(experts)};
  const SinkhornStats stats =
      sinkhorn_scalings(x, tokens, experts, xi, max_iters, tol, row_max.get(), log_d0.get(), log_d1.get(), stream);
  sinkhorn_plan_from_scalings(x, row_max.get(), log_d0.get(), log_d1.get(), tokens, experts, xi, plan, stream);
  return stats.iterations;
}

}  // namespace moe::cuda
