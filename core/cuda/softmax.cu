// Softmax kernels: one block per row; the row max and the sum of exponentials are block
// reductions (warp shuffles, then one shared partial per warp).
#include "core/cuda/block_reduce.h"
#include "core/cuda/launch.h"
#include "core/cuda/softmax.h"

namespace moe::cuda {
namespace {

template <class T>
__global__ void softmax_forward_kernel(const T* x, T* y, long cols) {
  const T* xr = x + blockIdx.x * cols;
  T* yr = y + blockIdx.x * cols;
  float m = -INFINITY;
  for (long j = threadIdx.x; j < cols; j += blockDim.x) m = fmaxf(m, to_float(xr[j]));
  m = block_max(m);
  float s = 0.0f;
  for (long j = threadIdx.x; j < cols; j += blockDim.x) s += expf(to_float(xr[j]) - m);
  const float inv = 1.0f / block_sum(s);
  for (long j = threadIdx.x; j < cols; j += blockDim.x) yr[j] = from_float<T>(expf(to_float(xr[j]) - m) * inv);
}

template <class T>
__global__ void softmax_backward_kernel(const T* y, const T* dy, T* dx, long cols) {
  const long off = blockIdx.x * cols;
  float dot = 0.0f;
  for (long j = threadIdx.x; j < cols; j += blockDim.x) dot += to_float(y[off + j]) * to_float(dy[off + j]);
  dot = block_sum(dot);
  for (long j = threadIdx.x; j < cols; j += blockDim.x)
    dx[off + j] = from_float<T>(to_float(y[off + j]) * (to_float(dy[off + j]) - dot));
}

__global__ void row_normalize_forward_kernel(const float* x, float* y, long cols) {
  const float* xr = x + blockIdx.x * cols;
  float* yr = y + blockIdx.x * cols;
  float s = 0.0f;
  for (long j = threadIdx.x; j < cols; j += blockDim.x) s += xr[j];
  s = block_sum(s);
  for (long j = threadIdx.x; j < cols; j += blockDim.x) yr[j] = xr[j] / s;
}

__global__ void row_normalize_backward_kernel(const float* x, const float* y, const float* dy, float* dx, long cols) {
  const long off = blockIdx.x * cols;
  float s = 0.0f, dot = 0.0f;
  for (long j = threadIdx.x; j < cols; j += blockDim.x) s += x[off + j], dot += dy[off + j] * y[off + j];
  s = block_sum(s);
  dot = block_sum(dot);
  for (long j = threadIdx.x; j < cols; j += blockDim.x) dx[off + j] = (dy[off + j] - dot) / s;
}

}  // namespace

void row_normalize_forward(const float* x, float* y, long rows, long cols, cudaStream_t stream) {
  MOE_CHECK(rows >= 0 && cols > 0, "cuda::row_normalize_forward", "bad shape [", rows, ", ", cols, "]");
  if (rows) MOE_LAUNCH(row_normalize_forward_kernel, unsigned(rows), row_block_threads(cols), 0, stream, x, y, cols);
}
void row_normalize_backward(const float* x, const float* y, const float* dy, float* dx, long rows, long cols,
                            cudaStream_t stream) {
  MOE_CHECK(rows >= 0 && cols > 0, "cuda::row_normalize_backward", "bad shape [", rows, ", ", cols, "]");
  if (rows)
    MOE_LAUNCH(row_normalize_backward_kernel, unsigned(rows), row_block_threads(cols), 0, stream, x, y, dy, dx, cols);
}

template <class T>
void softmax_forward(const T* x, T* y, long rows, long cols, cudaStream_t stream) {
  MOE_CHECK(rows >= 0 && cols > 0, "cuda::softmax_forward", "bad shape [", rows, ", ", cols, "]");
  if (rows)
    MOE_LAUNCH(softmax_forward_kernel<device_t<T>>, unsigned(rows), row_block_threads(cols), 0, stream, dev(x), dev(y),
               cols);
}
template <class T>
void softmax_backward(const T* y, const T* dy, T* dx, long rows, long cols, cudaStream_t stream) {
  MOE_CHECK(rows >= 0 && cols > 0, "cuda::softmax_backward", "bad shape [", rows, ", ", cols, "]");
  if (rows)
    MOE_LAUNCH(softmax_backward_kernel<device_t<T>>, unsigned(rows), row_block_threads(cols), 0, stream, dev(y),
               dev(dy), dev(dx), cols);
}

template void softmax_forward<float>(const float*, float*, long, long, cudaStream_t);
template void softmax_forward<bf16>(const bf16*, bf16*, long, long, cudaStream_t);
template void softmax_backward<float>(const float*, const float*, float*, long, long, cudaStream_t);
template void softmax_backward<bf16>(const bf16*, const bf16*, bf16*, long, long, cudaStream_t);

}  // namespace moe::cuda
