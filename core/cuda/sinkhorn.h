// The Sinkhorn transport plan of the S-BASE / SSR balancers (BALANCING.md section 3) on device
// pointers: Pi = diag(d0) K diag(d1) with K = exp((x - row max) / xi), iterated in the log domain.
#pragma once
#include "core/cuda/runtime.h"

namespace moe::cuda {

struct SinkhornStats {
  int iterations = 0;        // alternations run (<= max_iters)
  float last_change = 0.0f;  // mean_j |d1_new / d1_old - 1| at the last iteration run
};

// The scalings only, left on the device: x [tokens, experts] fp32 router scores; alternates
// d0 = 1 / (T K d1), d1 = 1 / (E K^T d0) from d1 = 1 until the mean relative change of d1 is
// below tol or max_iters ran (the CPU's layers/moe/balance/sinkhorn_plan rule and formulas; logs
// in double, exponentials and their sums in fp32). Writes row_max [tokens] (max_j x_ij), log_d0
// [tokens] and log_d1 [experts] (double) for
//   log Pi_ij = (x_ij - row_max_i) / xi + log_d0_i + log_d1_j
// (log_d1 is the CPU SinkhornPlan::log_d1). Each iteration is two kernels: token chunks (row
// logsumexp -> log d0, then per-expert partial (max, sumexp) of the chunk) and a block per expert
// combining the partials in a fixed order (log d1, change; the last block done: convergence).
// Deterministic: fixed merge orders, no float atomics (one integer ticket per iteration). No host
// sync per iteration: a device flag stops the remaining kernels once converged; the host launches
// iterations in batches of 2, 4, ... up to `batch` and reads the flag (and the iteration count)
// once per batch.
SinkhornStats sinkhorn_scalings(const float* x, long tokens, int experts, float xi, int max_iters, float tol,
                                float* row_max, double* log_d0, double* log_d1, cudaStream_t stream = nullptr,
                                int batch = 8);

// plan [tokens, experts] = exp(log Pi) from the scalings above.
void sinkhorn_plan_from_scalings(const float* x, const float* row_max, const double* log_d0, const double* log_d1,
                                 long tokens, int experts, float xi, float* plan, cudaStream_t stream = nullptr);

// The plan itself: plan [tokens, experts] = Pi (entries ~ 1 / (T E)) from sinkhorn_scalings;
// returns the number of iterations run. Log-domain sums keep small xi (0.05) from underflowing.
int sinkhorn_plan(const float* x, long tokens, int experts, float xi, int max_iters, float tol, float* plan,
                  cudaStream_t stream = nullptr);

// Tokens per block of the chunk kernel: 32 .. 256 (about 256 blocks at large T), fewer when the
// chunk's x [C, E + 1] would pass 32 KiB of shared memory (E > 255).
long sinkhorn_chunk_tokens(long tokens, int experts);

}  // namespace moe::cuda
