// Sinkhorn kernels: ONE launch per iteration. Launch i (block b, tokens [b C, b C + C)):
//  1. stages the chunk's x in shared memory (coalesced) and, for i > 0, folds the per-chunk
//     column partials (max, sum exp) of launch i - 1 into log d1 itself: every block redundantly,
//     in one fixed order (thread (g, e) walks the chunks g, g + G, ... in order, then the G group
//     results merge in order), so every block holds the same bits without a combine kernel;
//  2. takes the mean relative change of d1 against launch i - 1's d1 (in expert order) and stops
//     when it is below tol or i = max_iters: the blocks then write the requested output (nothing,
//     the plan, or the plan's top-k) from launch i - 1's row scalings and this d1, block 0 records
//     the iteration count in the state, and every later launch returns at once;
//  3. otherwise runs the row pass (row max and log d0 = -log T - logsumexp over the row against
//     log d1, P adjacent lanes per row merged in a fixed butterfly) and writes the chunk's column
//     partials into the buffer of parity i, for launch i + 1.
// So n iterations take n + 1 launches (the last folds and writes the output) instead of 2 n + 2.
// At T 16384, E 64: 128 blocks of 512 threads (one wave), each thread folding 16 partials, 4 lanes
// per row, 8 threads per expert in the column pass.
// Precision: the log-domain values (log K / xi, log d0, log d1, the running maxima) are doubles,
// because |x - max| / xi reaches thousands (logits +/-80 at xi 0.05) where an fp32 log keeps only
// ~1e-4 absolute; each exponent is a difference of those doubles, taken by expf, and the sums of
// exponentials are fp32. No float atomics, fixed merge orders: results are bit-identical run to
// run and across host batch sizes. The host launches iterations in batches (3 launches, i.e. 2
// iterations and their fold, then 4, 8, ... up to `batch`) and reads the state once per batch.
#include <algorithm>
#include <climits>
#include <cmath>

#include "core/cuda/caching_allocator.h"
#include "core/cuda/launch.h"
#include "core/cuda/memory.h"
#include "core/cuda/row_topk.h"
#include "core/cuda/sinkhorn.h"
#include "core/cuda/stage_rows.h"

namespace moe::cuda {
namespace {

constexpr unsigned kThreads = 512;  // threads of the iteration kernel (16 warps: short chains per thread)
constexpr long kTileFloats = 8448;  // shared memory for the chunk's x: 33 KiB (128 rows of 64 experts + pad)
constexpr int kRunning = INT_MAX;   // State::finished_at while the iterations run

struct State {
  int finished_at;  // the launch that stopped (= iterations run), kRunning before
  int iterations;
  float last_change;
};

enum class Output { kNone, kPlan, kTopk };

// Everything one launch needs but its index; buffers of two parities alternate between launches.
struct StepArgs {
  const float* x;
  float* row_max;        // [T]
  double* log_d0;        // [T]
  double* log_d1;        // [E]: the result, written by block 0 of the last launch
  double* d1_by_parity;  // [2, E]: launch i's log d1 (block 0), the "old" d1 of launch i + 1's change
  double* part_max;      // [2, chunks, E]
  float* part_sum;       // [2, chunks, E]
  float* plan;           // [T, E] (Output::kPlan)
  float* values;         // [T, k] (Output::kTopk)
  int32_t* indices;      // [T, k] (Output::kTopk)
  long tokens;
  int experts, chunk, chunks, k, max_iters;
  double inv_xi, log_tokens, log_experts;
  float tol;
  State* state;
};

// (m, s) with m = max_i v(i) and s = sum_i exp(v(i) - m) over i = begin, begin + step, ... < end;
// (-inf, 0) when empty. Two passes rather than an online rescale: each pass's steps are
// independent but for a max or an add, so the exponentials pipeline instead of forming one chain
// of dependent expf calls.
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

// (m, s) := the merge of (m, s) and (om, os): the same bits either way round, so a butterfly
// leaves every lane with the same result. An empty partial (s = 0) has m = -inf and adds nothing.
__device__ __forceinline__ void merge_pair(double& m, float& s, double om, float os) {
  const double mm = fmax(m, om);
  s = (s > 0.0f ? s * expf(float(m - mm)) : 0.0f) + (os > 0.0f ? os * expf(float(om - mm)) : 0.0f);
  m = mm;
}

// Merges n partials (max, sum) at stride `stride` in index order into (m, s), one pass reading
// kFoldBatch of them into registers at a time: the partials sit in L2 (another launch wrote
// them), so the loads of a batch are in flight together instead of one round trip per partial.
constexpr int kFoldBatch = 8;
__device__ __forceinline__ void fold_partials(const double* pm, const float* ps, int n, long stride, double& m,
                                              float& s) {
  m = -INFINITY;
  s = 0.0f;
  for (int i0 = 0; i0 < n; i0 += kFoldBatch) {
    double bm[kFoldBatch];
    float bs[kFoldBatch];
MOE_UNROLL
    for (int b = 0; b < kFoldBatch; ++b) {
      const bool in = i0 + b < n;
      bm[b] = in ? pm[(i0 + b) * stride] : -INFINITY;
      bs[b] = in ? ps[(i0 + b) * stride] : 0.0f;
    }
MOE_UNROLL
    for (int b = 0; b < kFoldBatch; ++b) merge_pair(m, s, bm[b], bs[b]);
  }
}

// One plan entry exp(log Pi): the same expression here and in sinkhorn_plan_kernel, so the fused
// output and sinkhorn_plan_from_scalings agree bit for bit.
__device__ __forceinline__ float plan_entry(float x, float row_max, double log_d0, double log_d1, double inv_xi) {
  return expf(float(double(x - row_max) * inv_xi + log_d0 + log_d1));
}

// Shared memory of the iteration kernel: doubles log d1 [E], log d0 [C], group max [G E]; floats
// row max [C], group sum [G E], change [E], the chunk's x [C, E + 1] (padded: the row pass reads
// along rows, the column pass down them, both without bank conflicts).
size_t step_shared_bytes(int experts, int chunk, int groups) {
  const size_t e = size_t(experts), c = size_t(chunk), ge = size_t(groups) * e;
  return (e + c + ge) * sizeof(double) + (c + ge + e + c * (e + 1)) * sizeof(float);
}

template <Output kOut>
__global__ void sinkhorn_step_kernel(StepArgs a, int launch) {
  if (launch > 0 && a.state->finished_at < launch) return;  // an earlier launch finished
  MOE_DYNAMIC_SHARED(double, smem);
  const int E = a.experts, groups = int(blockDim.x) / E > 1 ? int(blockDim.x) / E : 1, ge = groups * E;
  double* ld1 = smem;
  double* ld0 = ld1 + E;
  double* gmax = ld0 + a.chunk;
  float* rmax = reinterpret_cast<float*>(gmax + ge);
  float* gsum = rmax + a.chunk;
  float* change = gsum + ge;
  float* tile = change + E;
  MOE_SHARED(float, mean_change, [1]);
  const int stride = E + 1;
  const long t0 = long(blockIdx.x) * a.chunk;
  const int rows = a.tokens - t0 < a.chunk ? int(a.tokens - t0) : a.chunk;
  stage_rows(a.x + t0 * E, rows, E, tile, stride);  // the chunk's rows are contiguous: coalesced loads

  if (launch == 0) {  // d1 = 1
    for (int e = threadIdx.x; e < E; e += blockDim.x) ld1[e] = 0.0;
    if (blockIdx.x == 0 && threadIdx.x == 0) *a.state = State{kRunning, 0, 0.0f};
  } else {
    // The fold of launch i - 1's partials: thread (g, e) merges chunks g, g + G, ... in order,
    // then thread e merges the G group results in order.
    const long base = long((launch - 1) & 1) * a.chunks * E;
    for (int p = threadIdx.x; p < ge; p += blockDim.x) {
      const int e = p % E, g = p / E;
      fold_partials(a.part_max + base + long(g) * E + e, a.part_sum + base + long(g) * E + e,
                    a.chunks > g ? (a.chunks - g + groups - 1) / groups : 0, long(groups) * E, gmax[p], gsum[p]);
    }
    __syncthreads();
    const double* old_d1 = a.d1_by_parity + ((launch - 1) & 1) * E;
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
      double m;
      float s;
      merge_partials(gmax + e, gsum + e, groups, E, m, s);
      const double updated = -a.log_experts - (m + log(double(s)));
      change[e] = float(fabs(expm1(updated - old_d1[e])));
      ld1[e] = updated;
    }
    __syncthreads();
    if (threadIdx.x == 0) {  // the CPU's mean change, in expert order
      float c = 0.0f;
      for (int e = 0; e < E; ++e) c += change[e];
      mean_change[0] = c / float(E);
    }
  }
  __syncthreads();  // the tile, ld1 and the mean are in place

  if (launch > 0 && (mean_change[0] < a.tol || launch == a.max_iters)) {  // block-uniform
    if (blockIdx.x == 0) {
      for (int e = threadIdx.x; e < E; e += blockDim.x) a.log_d1[e] = ld1[e];
      if (threadIdx.x == 0) *a.state = State{launch, launch, mean_change[0]};
    }
    if constexpr (kOut != Output::kNone) {
      // The plan from launch i - 1's row scalings (this block's rows: written by this block index).
      for (int r = threadIdx.x; r < rows; r += blockDim.x) rmax[r] = a.row_max[t0 + r], ld0[r] = a.log_d0[t0 + r];
      __syncthreads();
      if constexpr (kOut == Output::kPlan) {
        float* dst = a.plan + t0 * E;
        for (int i = threadIdx.x; i < rows * E; i += blockDim.x) {
          const int r = i / E, e = i % E;
          dst[i] = plan_entry(tile[r * stride + e], rmax[r], ld0[r], ld1[e], a.inv_xi);
        }
      } else {  // one thread per row: the row's plan entries in place of its x, then their top-k
        for (int r = threadIdx.x; r < rows; r += blockDim.x) {
          float* row = tile + r * stride;
          for (int e = 0; e < E; ++e) row[e] = plan_entry(row[e], rmax[r], ld0[r], ld1[e], a.inv_xi);
          const long t = t0 + r;
          row_topk([&](int e) { return row[e]; }, E, a.k, [&](int s, float v, int e) {
            a.values[t * a.k + s] = v;
            a.indices[t * a.k + s] = e;
          });
        }
      }
    }
    return;
  }
  if (blockIdx.x == 0)
    for (int e = threadIdx.x; e < E; e += blockDim.x) a.d1_by_parity[(launch & 1) * E + e] = ld1[e];

  // Row pass: log d0[t] = -log T - logsumexp_e((x[t,e] - max) / xi + log d1[e]). P adjacent lanes
  // per row (a power of two <= 32, < 2 E) take experts j, j + P, ...; max and (max, sum) merge in a
  // butterfly over the P lanes in a fixed pattern, and the row's lane 0 writes (its bits do not
  // depend on timing). Every thread runs the same number of rounds, so the shuffles see full warps.
  int lanes = 1;
  while (lanes < 32 && lanes < E && lanes * 2 * a.chunk <= int(blockDim.x)) lanes *= 2;
  const int per_round = int(blockDim.x) / lanes, j = int(threadIdx.x) % lanes;
  for (int r0 = 0; r0 < rows; r0 += per_round) {
    const int r = r0 + int(threadIdx.x) / lanes;
    const float* row = tile + (r < rows ? r : 0) * stride;
    float mx = -INFINITY;
    if (r < rows)
      for (int e = j; e < E; e += lanes) mx = fmaxf(mx, row[e]);
    for (int o = lanes / 2; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    double m;
    float s;
    max_sum_exp([&](int e) { return double(row[e] - mx) * a.inv_xi + ld1[e]; }, j, r < rows ? E : 0, lanes, m, s);
    for (int o = lanes / 2; o > 0; o >>= 1)
      merge_pair(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
    if (r < rows && j == 0) {
      const double d0 = -a.log_tokens - (m + log(double(s)));
      rmax[r] = mx;
      ld0[r] = d0;
      a.row_max[t0 + r] = mx;
      a.log_d0[t0 + r] = d0;
    }
  }
  __syncthreads();

  // Column pass: per expert, (max, sum exp) of (x - max) / xi + log d0 over the chunk's rows,
  // split over G threads per expert (rows g, g + G, ...) and merged in group order.
  const long out = long(launch & 1) * a.chunks * E + long(blockIdx.x) * E;
  for (int p = threadIdx.x; p < ge; p += blockDim.x) {
    const int e = p % E, g = p / E;
    max_sum_exp([&](int r) { return double(tile[r * stride + e] - rmax[r]) * a.inv_xi + ld0[r]; }, g, rows, groups,
                gmax[p], gsum[p]);
  }
  __syncthreads();
  for (int e = threadIdx.x; e < E; e += blockDim.x)
    merge_partials(gmax + e, gsum + e, groups, E, a.part_max[out + e], a.part_sum[out + e]);
}

__global__ void sinkhorn_plan_kernel(const float* x, const float* row_max, const double* log_d0,
                                     const double* log_d1, float* plan, long tokens, int experts, double inv_xi) {
  const long n = tokens * experts;
  for (long i = blockIdx.x * long(blockDim.x) + threadIdx.x; i < n; i += long(gridDim.x) * blockDim.x) {
    const long t = i / experts;
    plan[i] = plan_entry(x[i], row_max[t], log_d0[t], log_d1[i - t * experts], inv_xi);
  }
}

template <Output kOut>
SinkhornStats run_iterations(StepArgs a, cudaStream_t stream, int batch) {
  const char* op = "cuda::sinkhorn_plan";
  const int groups = std::max(1, int(kThreads) / a.experts);
  const size_t smem = step_shared_bytes(a.experts, a.chunk, groups);
  // Up to 42 KiB at E <= 512; beyond, the per-expert arrays grow past the 48 KiB default (82 KiB at
  // E 2048): opted in, within sm_80's 163 KiB.
  MOE_CHECK(smem <= 160 * 1024, op, a.experts, " experts: too many for shared memory (", smem, " bytes)");
  const size_t opt_in = smem > 46 * 1024 ? smem : 0;  // 2 KiB of room for the static part (1 KiB on sm_90)
  Workspace<double> part_max{size_t(2) * a.chunks * a.experts}, d1_by_parity{size_t(2) * a.experts};
  Workspace<float> part_sum{size_t(2) * a.chunks * a.experts};
  Workspace<State> state(1);
  a.part_max = part_max.get();
  a.part_sum = part_sum.get();
  a.d1_by_parity = d1_by_parity.get();
  a.state = state.get();
  State host{kRunning, 0, 0.0f};
  // Launches 0 .. max_iters at most; the first batch is 3 (two iterations and the fold that
  // judges them: router logits at xi 1 converge in 2), then 4, 8, ... up to `batch`.
  allow_dynamic_shared(op, sinkhorn_step_kernel<kOut>, opt_in);
  for (int launched = 0, size = std::min(2, batch) + 1; launched <= a.max_iters; size = std::min(2 * size, batch)) {
    const int n = std::min(size, a.max_iters + 1 - launched);
    for (int i = 0; i < n; ++i)
      MOE_LAUNCH(sinkhorn_step_kernel<kOut>, unsigned(a.chunks), kThreads, smem, stream, a, launched + i);
    launched += n;
    copy_to_host(&host, state.get(), sizeof(State));  // the one sync of the batch
    if (host.finished_at != kRunning) break;
  }
  MOE_CHECK(host.finished_at != kRunning, op, "no launch finished after ", a.max_iters, " iterations");
  return SinkhornStats{host.iterations, host.last_change};
}

}  // namespace

long sinkhorn_chunk_tokens(long tokens, int experts) {
  const long per_block = (tokens + 127) / 128;  // about 128 blocks: one wave, and fewer partials to fold
  const long chunk = std::min<long>(256, std::max<long>(32, (per_block + 31) / 32 * 32));
  const long fits = kTileFloats / (long(experts) + 1);  // the chunk's x in shared memory
  return std::max<long>(1, std::min(chunk, fits));
}

SinkhornStats sinkhorn_run(const float* x, long tokens, int experts, float xi, int max_iters, float tol,
                           const SinkhornOutputs& out, cudaStream_t stream, int batch) {
  const char* op = "cuda::sinkhorn_plan";
  MOE_CHECK(tokens > 0 && experts > 0, op, "bad shape [", tokens, ", ", experts, "]");
  MOE_CHECK(xi > 0 && max_iters >= 1 && tol >= 0 && batch >= 1, op, "xi = ", xi, ", max_iters = ", max_iters,
            ", tol = ", tol, ", batch = ", batch, ": expected xi > 0, max_iters >= 1, tol >= 0, batch >= 1");
  MOE_CHECK(!out.values == !out.indices && (!out.values || (out.k >= 1 && out.k <= experts)), op,
            "top-k output: values and indices together, k = ", out.k, " in [1, ", experts, "]");
  MOE_CHECK(!(out.plan && out.values), op, "one fused output: the plan or its top-k");
  const int chunk = int(sinkhorn_chunk_tokens(tokens, experts));
  const long chunks = (tokens + chunk - 1) / chunk;
  MOE_CHECK(chunks < (1L << 31), op, tokens, " tokens: too many chunks");
  // Scalings the caller does not keep live in workspaces.
  Workspace<float> own_row_max{out.row_max ? 0 : size_t(tokens)};
  Workspace<double> own_log_d0{out.log_d0 ? 0 : size_t(tokens)}, own_log_d1{out.log_d1 ? 0 : size_t(experts)};
  StepArgs a{};
  a.x = x;
  a.row_max = out.row_max ? out.row_max : own_row_max.get();
  a.log_d0 = out.log_d0 ? out.log_d0 : own_log_d0.get();
  a.log_d1 = out.log_d1 ? out.log_d1 : own_log_d1.get();
  a.plan = out.plan;
  a.values = out.values;
  a.indices = out.indices;
  a.tokens = tokens;
  a.experts = experts;
  a.chunk = chunk;
  a.chunks = int(chunks);
  a.k = out.k;
  a.max_iters = max_iters;
  a.inv_xi = 1.0 / double(xi);
  a.log_tokens = std::log(double(tokens));
  a.log_experts = std::log(double(experts));
  a.tol = tol;
  if (out.plan) return run_iterations<Output::kPlan>(a, stream, batch);
  if (out.values) return run_iterations<Output::kTopk>(a, stream, batch);
  return run_iterations<Output::kNone>(a, stream, batch);
}

SinkhornStats sinkhorn_scalings(const float* x, long tokens, int experts, float xi, int max_iters, float tol,
                                float* row_max, double* log_d0, double* log_d1, cudaStream_t stream, int batch) {
  SinkhornOutputs out;
  out.row_max = row_max;
  out.log_d0 = log_d0;
  out.log_d1 = log_d1;
  return sinkhorn_run(x, tokens, experts, xi, max_iters, tol, out, stream, batch);
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
  SinkhornOutputs out;
  out.plan = plan;
  return sinkhorn_run(x, tokens, experts, xi, max_iters, tol, out, stream).iterations;
}

int sinkhorn_topk(const float* x, long tokens, int experts, float xi, int max_iters, float tol, int k, float* values,
                  int32_t* indices, cudaStream_t stream) {
  SinkhornOutputs out;
  out.k = k;
  out.values = values;
  out.indices = indices;
  return sinkhorn_run(x, tokens, experts, xi, max_iters, tol, out, stream).iterations;
}

}  // namespace moe::cuda
