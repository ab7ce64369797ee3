// Gate kernels: one thread per token (k is small), which owns its row of dscores, so the
// backward's scatter has no conflicts and no atomics.
#include "core/cuda/gates.h"
#include "core/cuda/launch.h"

namespace moe::cuda {
namespace {

constexpr int kThreads = 128;

__device__ __forceinline__ bool kept(int32_t id, int valid) { return id >= 0 && id < valid; }

__global__ void gates_forward_kernel(const float* scores, const int32_t* indices, long tokens, int cols, int k,
                                     int valid, bool renormalize, float scale, float* gates) {
  const long t = blockIdx.x * long(blockDim.x) + threadIdx.x;
  if (t >= tokens) return;
  const float* s = scores + t * cols;
  const int32_t* ids = indices + t * k;
  float z = 0.0f;
  if (renormalize)
    for (int j = 0; j < k; ++j)
      if (kept(ids[j], valid)) z += s[ids[j]];
  for (int j = 0; j < k; ++j)
    gates[t * k + j] = !kept(ids[j], valid) ? 0.0f : renormalize ? s[ids[j]] / z * scale : s[ids[j]] * scale;
}

// Renormalized: g_j = c s_j / z, so ds_i = c (dg_i / z - sum_j dg_j (s_j / z) / z) over kept i, j:
// the host's order (build_routing's autograd: div's backward through the normalized gate s_j / z).
// A token with one kept choice then gets ds = 0 exactly, as on the host (s / s == 1); the form
// dg_i / z - sum_j dg_j s_j / z^2 left ulps of dg / z there (up to 1e-4 in a router grad whose
// exact value is 0: k = 1, a small sigmoid score, MOE_TEST_SEED 68960967).
__global__ void gates_backward_kernel(const float* scores, const int32_t* indices, const float* dgates, long tokens,
                                      int cols, int k, int valid, bool renormalize, float scale, float* dscores) {
  const long t = blockIdx.x * long(blockDim.x) + threadIdx.x;
  if (t >= tokens) return;
  const float* s = scores + t * cols;
  const int32_t* ids = indices + t * k;
  const float* dg = dgates + t * k;
  float* ds = dscores + t * cols;
  for (int c = 0; c < cols; ++c) ds[c] = 0.0f;
  float z = 0.0f, dz = 0.0f;  // dz: the grad of z
  if (renormalize) {
    for (int j = 0; j < k; ++j)
      if (kept(ids[j], valid)) z += s[ids[j]];
    for (int j = 0; j < k; ++j)
      if (kept(ids[j], valid)) dz -= dg[j] * (s[ids[j]] / z) / z;
  }
  for (int j = 0; j < k; ++j)
    if (kept(ids[j], valid)) ds[ids[j]] = renormalize ? scale * (dg[j] / z + dz) : scale * dg[j];
}

void check_args(const char* op, long tokens, int cols, int k, int valid) {
  MOE_CHECK(tokens >= 0 && cols >= 1 && k >= 1 && k <= cols && valid >= 0 && valid <= cols, op, "tokens ", tokens,
            ", cols ", cols, ", k ", k, ", valid experts ", valid, ": expected 1 <= k <= cols, 0 <= valid <= cols");
}

}  // namespace

void gates_forward(const float* scores, const int32_t* indices, long tokens, int cols, int k, int valid_experts,
                   bool renormalize, float scale, float* gates, cudaStream_t stream) {
  check_args("cuda::gates_forward", tokens, cols, k, valid_experts);
  if (tokens > 0)
    MOE_LAUNCH(gates_forward_kernel, ceil_div(tokens, kThreads), kThreads, 0, stream, scores, indices, tokens, cols, k,
               valid_experts, renormalize, scale, gates);
}

void gates_backward(const float* scores, const int32_t* indices, const float* dgates, long tokens, int cols, int k,
                    int valid_experts, bool renormalize, float scale, float* dscores, cudaStream_t stream) {
  check_args("cuda::gates_backward", tokens, cols, k, valid_experts);
  if (tokens > 0)
    MOE_LAUNCH(gates_backward_kernel, ceil_div(tokens, kThreads), kThreads, 0, stream, scores, indices, dgates, tokens,
               cols, k, valid_experts, renormalize, scale, dscores);
}

}  // namespace moe::cuda
