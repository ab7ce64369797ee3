// Sinkhorn kernels: a row pass (one block per token, block logsumexp), a column pass (one thread
// per expert, online logsumexp over tokens in order: deterministic) that also records how much
// d1 moved, and the final plan. State lives in the log domain: log d0 [T], log d1 [E].
#include <cmath>

#include "core/cuda/block_reduce.h"
#include "core/cuda/caching_allocator.h"
#include "core/cuda/launch.h"
#include "core/cuda/memory.h"
#include "core/cuda/sinkhorn.h"

namespace moe::cuda {
namespace {

// log d0[t] = -log T - logsumexp_e(x[t,e] / xi + log d1[e])
__global__ void sinkhorn_rows_kernel(const float* x, const float* log_d1, float* log_d0, int experts, float inv_xi,
                                     float log_tokens) {
  const float* row = x + blockIdx.x * long(experts);
  float m = -INFINITY;
  for (int e = threadIdx.x; e < experts; e += blockDim.x) m = fmaxf(m, row[e] * inv_xi + log_d1[e]);
  m = block_max(m);
  float s = 0.0f;
  for (int e = threadIdx.x; e < experts; e += blockDim.x) s += expf(row[e] * inv_xi + log_d1[e] - m);
  s = block_sum(s);
  if (threadIdx.x == 0) log_d0[blockIdx.x] = -log_tokens - (m + logf(s));
}

// log d1[e] = -log E - logsumexp_t(x[t,e] / xi + log d0[t]); delta[e] = |d1_new - d1_old|.
__global__ void sinkhorn_cols_kernel(const float* x, const float* log_d0, float* log_d1, float* delta, long tokens,
                                     int experts, float inv_xi, float log_experts) {
  const int e = blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= experts) return;
  float m = -INFINITY, s = 0.0f;
  for (long t = 0; t < tokens; ++t) {
    const float v = x[t * experts + e] * inv_xi + log_d0[t];
    if (v > m) {
      s = s * expf(m - v) + 1.0f;
      m = v;
    } else {
      s += expf(v - m);
    }
  }
  const float updated = -log_experts - (m + logf(s));
  delta[e] = fabsf(expf(updated) - expf(log_d1[e]));
  log_d1[e] = updated;
}

__global__ void mean_kernel(const float* v, int n, float* out) {
  float s = 0.0f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) s += v[i];
  s = block_sum(s);
  if (threadIdx.x == 0) *out = s / float(n);
}

__global__ void sinkhorn_plan_kernel(const float* x, const float* log_d0, const float* log_d1, float* plan, long tokens,
                                     int experts, float inv_xi) {
  const long n = tokens * experts;
  for (long i = blockIdx.x * long(blockDim.x) + threadIdx.x; i < n; i += long(gridDim.x) * blockDim.x)
    plan[i] = expf(x[i] * inv_xi + log_d0[i / experts] + log_d1[i % experts]);
}

__global__ void fill_kernel(float* v, int n, float value) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) v[i] = value;
}

}  // namespace

int sinkhorn_plan(const float* x, long tokens, int experts, float xi, int max_iters, float tol, float* plan,
                  cudaStream_t stream) {
  MOE_CHECK(tokens > 0 && experts > 0, "cuda::sinkhorn_plan", "bad shape [", tokens, ", ", experts, "]");
  MOE_CHECK(xi > 0 && max_iters >= 1 && tol >= 0, "cuda::sinkhorn_plan", "xi = ", xi, ", max_iters = ", max_iters,
            ", tol = ", tol, ": expected xi > 0, max_iters >= 1, tol >= 0");
  Workspace<float> log_d0(tokens), log_d1(experts), delta(experts), mean_delta(1);
  const float inv_xi = 1.0f / xi, log_t = float(std::log(double(tokens))), log_e = float(std::log(double(experts)));
  MOE_LAUNCH(fill_kernel, ceil_div(experts, 128), 128, 0, stream, log_d1.get(), experts, 0.0f);  // d1 = 1
  int it = 0;
  while (it < max_iters) {
    ++it;
    MOE_LAUNCH(sinkhorn_rows_kernel, unsigned(tokens), row_block_threads(experts), 0, stream, x,
               static_cast<const float*>(log_d1.get()), log_d0.get(), experts, inv_xi, log_t);
    MOE_LAUNCH(sinkhorn_cols_kernel, ceil_div(experts, 64), 64, 0, stream, x, static_cast<const float*>(log_d0.get()),
               log_d1.get(), delta.get(), tokens, experts, inv_xi, log_e);
    MOE_LAUNCH(mean_kernel, 1, row_block_threads(experts, 1024), 0, stream, static_cast<const float*>(delta.get()),
               experts, mean_delta.get());
    float change = 0.0f;
    copy_to_host(&change, mean_delta.get(), sizeof(float));
    if (change < tol) break;
  }
  unsigned blocks = ceil_div(tokens * experts, 256);
  if (blocks > 4096) blocks = 4096;
  MOE_LAUNCH(sinkhorn_plan_kernel, blocks, 256, 0, stream, x, static_cast<const float*>(log_d0.get()),
             static_cast<const float*>(log_d1.get()), plan, tokens, experts, inv_xi);
  return it;
}

}  // namespace moe::cuda
