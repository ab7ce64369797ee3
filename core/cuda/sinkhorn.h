// The Sinkhorn transport plan of the S-BASE / SSR balancers (BALANCING.md section 3) on device
// pointers: Pi = diag(d0) K diag(d1) with K = exp((x - row max) / xi), iterated in the log domain.
#pragma once
#include <cstdint>

#include "core/cuda/runtime.h"

namespace moe::cuda {

struct SinkhornStats {
  int iterations = 0;        // alternations run (<= max_iters)
  float last_change = 0.0f;  // mean_j |d1_new / d1_old - 1| at the last iteration run
};

// Where sinkhorn_run leaves its results (device pointers; null: not wanted, kept in a workspace).
// At most one fused output: the plan [T, E], or its top-k (values [T, k] = the plan entries,
// indices [T, k]; router_topk's order: descending, ties to the lower expert) without the plan.
struct SinkhornOutputs {
  float* row_max = nullptr;  // [T]
  double* log_d0 = nullptr;  // [T]
  double* log_d1 = nullptr;  // [E]
  float* plan = nullptr;
  int k = 0;
  float* values = nullptr;
  int32_t* indices = nullptr;
};

// x [tokens, experts] fp32 router scores; alternates d0 = 1 / (T K d1), d1 = 1 / (E K^T d0) from
// d1 = 1 until the mean relative change of d1 is below tol or max_iters ran (the CPU's
// layers/moe/balance/sinkhorn_plan rule and formulas; logs in double, exponentials and their sums
// in fp32). The scalings are row_max [tokens] (max_j x_ij), log_d0 [tokens] and log_d1 [experts]
// (double) for
//   log Pi_ij = (x_ij - row_max_i) / xi + log_d0_i + log_d1_j
// (log_d1 is the CPU SinkhornPlan::log_d1). One kernel per iteration plus one that folds the last
// and writes the fused output (sinkhorn.cu). Deterministic: fixed merge orders, no float atomics.
// No host sync per iteration: a device state stops the remaining kernels once converged; the host
// launches in batches (two iterations first, then 4, 8, ... up to `batch`) and reads the state
// once per batch.
SinkhornStats sinkhorn_run(const float* x, long tokens, int experts, float xi, int max_iters, float tol,
                           const SinkhornOutputs& out, cudaStream_t stream = nullptr, int batch = 8);

// sinkhorn_run keeping the three scalings only.
SinkhornStats sinkhorn_scalings(const float* x, long tokens, int experts, float xi, int max_iters, float tol,
                                float* row_max, double* log_d0, double* log_d1, cudaStream_t stream = nullptr,
                                int batch = 8);

// plan [tokens, experts] = exp(log Pi) from the scalings above.
void sinkhorn_plan_from_scalings(const float* x, const float* row_max, const double* log_d0, const double* log_d1,
                                 long tokens, int experts, float xi, float* plan, cudaStream_t stream = nullptr);

// The plan itself: plan [tokens, experts] = Pi (entries ~ 1 / (T E)), written by the last
// iteration kernel (the same bits as sinkhorn_plan_from_scalings); returns the iterations run.
// Log-domain sums keep small xi (0.05) from underflowing.
int sinkhorn_plan(const float* x, long tokens, int experts, float xi, int max_iters, float tol, float* plan,
                  cudaStream_t stream = nullptr);

// S-BASE's selection without the plan: values, indices [tokens, k] = router_topk of sinkhorn_plan's
// plan, bit for bit, from the last iteration kernel; returns the iterations run.
int sinkhorn_topk(const float* x, long tokens, int experts, float xi, int max_iters, float tol, int k, float* values,
                  int32_t* indices, cudaStream_t stream = nullptr);

// Tokens per block of the iteration kernel: 32 .. 256 (about 128 blocks at large T: every block
// folds every block's partials), fewer when the chunk's x [C, E + 1] would pass 33 KiB of shared
// memory (E > 64).
long sinkhorn_chunk_tokens(long tokens, int experts);

}  // namespace moe::cuda
