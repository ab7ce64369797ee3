// The Sinkhorn transport plan of the S-BASE / SSR balancers (BALANCING.md section 3) on device
// pointers: Pi = diag(d0) K diag(d1) with K = exp(x / xi), iterated in the log domain.
#pragma once
#include "core/cuda/runtime.h"

namespace moe::cuda {

// x [tokens, experts] fp32 router scores. Alternates d0 = 1 / (T * K d1), d1 = 1 / (E * K^T d0)
// from d1 = 1 until the mean |change of d1| < tol or max_iters; writes plan [tokens, experts] and
// returns the number of iterations run. Log-domain sums (logsumexp) keep small xi (0.05) from
// underflowing whole rows. Synchronizes once per iteration to test convergence.
int sinkhorn_plan(const float* x, long tokens, int experts, float xi, int max_iters, float tol, float* plan,
                  cudaStream_t stream = nullptr);

}  // namespace moe::cuda
