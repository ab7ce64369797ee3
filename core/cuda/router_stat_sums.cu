// Routing-statistics sums: each block takes kTokens tokens; thread i computes token i's entropy
// (and its first NaN score) while the block's column sums of the logits are taken one column per
// thread (consecutive threads read consecutive columns of a row: coalesced). A block's partials
// (E column sums, its entropy sum, its first NaN) go to a [blocks, E + 2] table that a second
// kernel folds per column in block order.
#include <cmath>

#include "core/cuda/caching_allocator.h"
#include "core/cuda/launch.h"
#include "core/cuda/router_stat_sums.h"

namespace moe::cuda {
namespace {

constexpr int kTokens = 128;  // tokens per block, one thread each for the entropy

__global__ void __launch_bounds__(kTokens)
    stat_partials_kernel(const float* scores, const float* logits, long tokens, int score_cols, int logit_cols,
                         int experts, double* partials) {
  MOE_SHARED(double, entropy, [kTokens]);
  MOE_SHARED(double, first_nan, [kTokens]);
  const long t0 = long(blockIdx.x) * kTokens;
  const int n = int(tokens - t0 < kTokens ? tokens - t0 : kTokens);
  double* row_out = partials + long(blockIdx.x) * (experts + 2);

  double h = 0, nan_at = -1;
  if (int(threadIdx.x) < n) {
    const long t = t0 + threadIdx.x;
    const float* p = scores + t * score_cols;
    double z = 0;
    for (int j = 0; j < score_cols; ++j) {
      const float v = p[j];
      if (v != v && nan_at < 0) nan_at = double(t * score_cols + j);
      z += double(v);
    }
    if (z > 0)
      for (int j = 0; j < score_cols; ++j)
        if (p[j] > 0) {
          const double q = double(p[j]) / z;
          h -= q * log(q);
        }
  }
  entropy[threadIdx.x] = h;
  first_nan[threadIdx.x] = nan_at;

  for (int j = threadIdx.x; j < experts; j += blockDim.x) {
    double s = 0;
    for (int i = 0; i < n; ++i) s += double(logits[(t0 + i) * logit_cols + j]);
    row_out[j] = s;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    double hs = 0, first = -1;
    for (int i = 0; i < n; ++i) {
      hs += entropy[i];
      if (first < 0 && first_nan[i] >= 0) first = first_nan[i];
    }
    row_out[experts] = hs;
    row_out[experts + 1] = first;
  }
}

__global__ void fold_partials_kernel(const double* partials, int blocks, int experts, double* out) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= experts + 2) return;
  const int width = experts + 2;
  if (c == experts + 1) {  // the first NaN: the first block that saw one
    double first = -1;
    for (int b = 0; b < blocks && first < 0; ++b) first = partials[long(b) * width + c];
    out[c] = first;
    return;
  }
  double s = 0;
  for (int b = 0; b < blocks; ++b) s += partials[long(b) * width + c];
  out[c] = s;
}

}  // namespace

void router_stat_sums(const float* scores, const float* logits, long tokens, int score_cols, int logit_cols,
                      int experts, double* out, cudaStream_t stream) {
  MOE_CHECK(tokens >= 1 && score_cols >= 1 && experts >= 1 && experts <= logit_cols, "cuda::router_stat_sums",
            "tokens = ", tokens, ", score_cols = ", score_cols, ", logit_cols = ", logit_cols, ", experts = ", experts,
            ": expected tokens, score_cols, experts >= 1 and experts <= logit_cols");
  const unsigned blocks = ceil_div(tokens, kTokens);
  Workspace<double> partials{size_t(blocks) * size_t(experts + 2)};
  MOE_LAUNCH(stat_partials_kernel, blocks, kTokens, 0, stream, scores, logits, tokens, score_cols, logit_cols, experts,
             partials.get());
  MOE_LAUNCH(fold_partials_kernel, ceil_div(experts + 2, 128), 128, 0, stream,
             static_cast<const double*>(partials.get()), int(blocks), experts, out);
}

}  // namespace moe::cuda
