// Cross-entropy kernels: one block per row (max, sum of exponentials, the target's logit), then
// one block that averages the row losses in a fixed order, so the loss is bit-reproducible.
#include <cmath>

#include "core/cuda/block_reduce.h"
#include "core/cuda/launch.h"
#include "core/cuda/loss.h"
#include "core/cuda/caching_allocator.h"
#include "core/cuda/memory.h"

namespace moe::cuda {
namespace {

template <class T>
__global__ void cross_entropy_rows_kernel(const T* logits, const int64_t* targets, float* lse, float* row_loss, long vocab,
                                          int64_t ignore_index) {
  const T* x = logits + blockIdx.x * vocab;
  float m = -INFINITY;
  for (long j = threadIdx.x; j < vocab; j += blockDim.x) m = fmaxf(m, to_float(x[j]));
  m = block_max(m);
  float s = 0.0f;
  for (long j = threadIdx.x; j < vocab; j += blockDim.x) s += expf(to_float(x[j]) - m);
  s = block_sum(s);
  if (threadIdx.x == 0) {
    const float l = m + logf(s);
    const int64_t t = targets[blockIdx.x];
    lse[blockIdx.x] = l;
    if (t == ignore_index) row_loss[blockIdx.x] = 0.0f;
    else if (t < 0 || t >= vocab) row_loss[blockIdx.x] = NAN;  // a bad target poisons the loss
    else row_loss[blockIdx.x] = l - to_float(x[t]);
  }
}

__global__ void cross_entropy_mean_kernel(const float* row_loss, const int64_t* targets, long rows, int64_t ignore_index,
                                          float* stats) {
  float sum = 0.0f, count = 0.0f;
  for (long i = threadIdx.x; i < rows; i += blockDim.x) {
    sum += row_loss[i];  // ignored rows hold 0
    count += targets[i] != ignore_index ? 1.0f : 0.0f;
  }
  sum = block_sum(sum);
  count = block_sum(count);
  if (threadIdx.x == 0) {
    stats[0] = count > 0.0f ? sum / count : 0.0f;
    stats[1] = count;
  }
}

template <class T>
__global__ void cross_entropy_backward_kernel(const T* logits, const int64_t* targets, const float* lse,
                                              const float* stats, float dloss, T* dlogits, long vocab,
                                              int64_t ignore_index) {
  const long off = blockIdx.x * vocab;
  const int64_t t = targets[blockIdx.x];
  const float scale = (t == ignore_index || stats[1] == 0.0f) ? 0.0f : dloss / stats[1];
  const float l = lse[blockIdx.x];
  for (long j = threadIdx.x; j < vocab; j += blockDim.x) {
    float p = expf(to_float(logits[off + j]) - l);
    dlogits[off + j] = from_float<T>(scale * (p - (j == t ? 1.0f : 0.0f)));
  }
}

}  // namespace

template <class T>
void cross_entropy_forward(const T* logits, const int64_t* targets, float* lse, float* stats, long rows, long vocab,
                           int64_t ignore_index, cudaStream_t stream) {
  MOE_CHECK(rows > 0 && vocab > 0, "cuda::cross_entropy_forward", "bad shape [", rows, ", ", vocab, "]");
  Workspace<float> row_loss(rows);
  MOE_LAUNCH(cross_entropy_rows_kernel<device_t<T>>, unsigned(rows), row_block_threads(vocab, 512), 0, stream,
             dev(logits), targets, lse, row_loss.get(), vocab, ignore_index);
  MOE_LAUNCH(cross_entropy_mean_kernel, 1, row_block_threads(rows, 1024), 0, stream, row_loss.get(), targets, rows,
             ignore_index, stats);
}

template <class T>
void cross_entropy_backward(const T* logits, const int64_t* targets, const float* lse, const float* stats, float dloss,
                            T* dlogits, long rows, long vocab, int64_t ignore_index, cudaStream_t stream) {
  MOE_CHECK(rows > 0 && vocab > 0, "cuda::cross_entropy_backward", "bad shape [", rows, ", ", vocab, "]");
  MOE_LAUNCH(cross_entropy_backward_kernel<device_t<T>>, unsigned(rows), row_block_threads(vocab, 512), 0, stream,
             dev(logits), targets, lse, stats, dloss, dev(dlogits), vocab, ignore_index);
}

template void cross_entropy_forward<float>(const float*, const int64_t*, float*, float*, long, long, int64_t,
                                           cudaStream_t);
template void cross_entropy_forward<bf16>(const bf16*, const int64_t*, float*, float*, long, long, int64_t,
                                          cudaStream_t);
template void cross_entropy_backward<float>(const float*, const int64_t*, const float*, const float*, float, float*,
                                            long, long, int64_t, cudaStream_t);
template void cross_entropy_backward<bf16>(const bf16*, const int64_t*, const float*, const float*, float, bf16*,
                                           long, long, int64_t, cudaStream_t);

}  // namespace moe::cuda
