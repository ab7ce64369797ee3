// Router loss kernels: one block per token for the logsumexp, one block for every mean (rows or
// experts in a fixed order, so results are bit-reproducible), flat kernels for the gradients.
#include <cmath>

#include "core/cuda/block_reduce.h"
#include "core/cuda/caching_allocator.h"
#include "core/cuda/launch.h"
#include "core/cuda/router_losses.h"

namespace moe::cuda {
namespace {

constexpr int kThreads = 256;
constexpr unsigned kMaxBlocks = 4096;

unsigned flat_blocks(long n) {
  const unsigned b = ceil_div(size_t(n), kThreads);
  return b < 1 ? 1 : (b > kMaxBlocks ? kMaxBlocks : b);
}

__global__ void row_lse_kernel(const float* logits, int experts, float* lse) {
  const float* x = logits + long(blockIdx.x) * experts;
  float m = -INFINITY;
  for (int j = threadIdx.x; j < experts; j += blockDim.x) m = fmaxf(m, x[j]);
  m = block_max(m);
  float s = 0.0f;
  for (int j = threadIdx.x; j < experts; j += blockDim.x) s += expf(x[j] - m);
  s = block_sum(s);
  if (threadIdx.x == 0) lse[blockIdx.x] = m + logf(s);
}

__global__ void mean_square_kernel(const float* v, long n, float* out) {
  float s = 0.0f;
  for (long i = threadIdx.x; i < n; i += blockDim.x) s += v[i] * v[i];
  s = block_sum(s);
  if (threadIdx.x == 0) *out = s / float(n);
}

__global__ void z_loss_backward_kernel(const float* logits, const float* lse, float dloss, long tokens, int experts,
                                       float* dlogits) {
  const long n = tokens * experts;
  for (long i = blockIdx.x * long(blockDim.x) + threadIdx.x; i < n; i += long(gridDim.x) * blockDim.x) {
    const float l = lse[i / experts];
    dlogits[i] = dloss * 2.0f * l / float(tokens) * expf(logits[i] - l);
  }
}

// One block: thread e sums its column of each sequence in token order, then a block sum of
// f_be P_be over sequences and experts.
__global__ void sequence_aux_kernel(const float* probs, const int32_t* loads, double total, long tokens, long seq_len,
                                    int experts, float* loss) {
  const long sequences = tokens / seq_len;
  float term = 0.0f;
  for (int e = threadIdx.x; e < experts; e += blockDim.x)
    for (long b = 0; b < sequences; ++b) {
      float col = 0.0f;
      for (long t = b * seq_len; t < (b + 1) * seq_len; ++t) col += probs[t * experts + e];
      const float f = total > 0 ? float(double(loads[b * experts + e]) / total) : 0.0f;
      term += f * (col / float(seq_len));
    }
  term = block_sum(term);
  if (threadIdx.x == 0) *loss = float(experts) / float(sequences) * term;
}

__global__ void sequence_aux_backward_kernel(const int32_t* loads, double total, float dloss, long tokens, long seq_len,
                                             int experts, float* dprobs) {
  const long n = tokens * experts;
  const float scale = dloss * float(experts) / float(tokens / seq_len) / float(seq_len);
  for (long i = blockIdx.x * long(blockDim.x) + threadIdx.x; i < n; i += long(gridDim.x) * blockDim.x) {
    const long t = i / experts, e = i % experts;
    const float f = total > 0 ? float(double(loads[t / seq_len * experts + e]) / total) : 0.0f;
    dprobs[i] = scale * f;
  }
}

__global__ void loss_free_update_kernel(const float* loads, int experts, float rate, bool sign, float* bias) {
  MOE_SHARED(double, mean, [1]);
  if (threadIdx.x == 0) {
    double m = 0;
    for (int e = 0; e < experts; ++e) m += double(loads[e]);
    mean[0] = m / double(experts);
  }
  __syncthreads();
  const double m = mean[0];
  for (int e = threadIdx.x; e < experts; e += blockDim.x) {
    const double l = double(loads[e]);
    float step;
    if (sign)
      step = l < m ? rate : (l > m ? -rate : 0.0f);
    else
      step = m > 0 ? rate * float((m - l) / m) : 0.0f;
    bias[e] += step;
  }
}

void check_shape(const char* op, long tokens, int experts) {
  MOE_CHECK(tokens > 0 && experts > 0, op, "bad shape [", tokens, ", ", experts, "]: expected tokens, experts >= 1");
}

}  // namespace

void router_z_loss_forward(const float* logits, long tokens, int experts, float* lse, float* loss,
                           cudaStream_t stream) {
  check_shape("cuda::router_z_loss_forward", tokens, experts);
  MOE_LAUNCH(row_lse_kernel, unsigned(tokens), row_block_threads(experts), 0, stream, logits, experts, lse);
  MOE_LAUNCH(mean_square_kernel, 1, row_block_threads(tokens, 1024), 0, stream, static_cast<const float*>(lse), tokens,
             loss);
}

void router_z_loss_backward(const float* logits, const float* lse, float dloss, long tokens, int experts,
                            float* dlogits, cudaStream_t stream) {
  check_shape("cuda::router_z_loss_backward", tokens, experts);
  MOE_LAUNCH(z_loss_backward_kernel, flat_blocks(tokens * experts), kThreads, 0, stream, logits, lse, dloss, tokens,
             experts, dlogits);
}

void sequence_aux_forward(const float* probs, const int32_t* seq_loads, double per_sequence_total, long tokens,
                          long seq_len, int experts, float* loss, cudaStream_t stream) {
  check_shape("cuda::sequence_aux_forward", tokens, experts);
  MOE_CHECK(seq_len >= 1 && tokens % seq_len == 0, "cuda::sequence_aux_forward", "tokens (", tokens,
            ") must be a multiple of seq_len (", seq_len, ")");
  MOE_LAUNCH(sequence_aux_kernel, 1, row_block_threads(experts, 1024), 0, stream, probs, seq_loads, per_sequence_total,
             tokens, seq_len, experts, loss);
}

void sequence_aux_backward(const int32_t* seq_loads, double per_sequence_total, float dloss, long tokens, long seq_len,
                           int experts, float* dprobs, cudaStream_t stream) {
  check_shape("cuda::sequence_aux_backward", tokens, experts);
  MOE_CHECK(seq_len >= 1 && tokens % seq_len == 0, "cuda::sequence_aux_backward", "tokens (", tokens,
            ") must be a multiple of seq_len (", seq_len, ")");
  MOE_LAUNCH(sequence_aux_backward_kernel, flat_blocks(tokens * experts), kThreads, 0, stream, seq_loads,
             per_sequence_total, dloss, tokens, seq_len, experts, dprobs);
}

void switch_aux_forward(const float* probs, const int32_t* loads, double total, long tokens, int experts, float* loss,
                        cudaStream_t stream) {
  sequence_aux_forward(probs, loads, total, tokens, tokens, experts, loss, stream);
}

void switch_aux_backward(const int32_t* loads, double total, float dloss, long tokens, int experts, float* dprobs,
                         cudaStream_t stream) {
  sequence_aux_backward(loads, total, dloss, tokens, tokens, experts, dprobs, stream);
}

void loss_free_bias_update(const float* loads, int experts, float rate, bool sign, float* bias, cudaStream_t stream) {
  MOE_CHECK(experts > 0, "cuda::loss_free_bias_update", "experts = ", experts, ", expected >= 1");
  MOE_LAUNCH(loss_free_update_kernel, 1, row_block_threads(experts, 1024), 0, stream, loads, experts, rate, sign, bias);
}

}  // namespace moe::cuda
