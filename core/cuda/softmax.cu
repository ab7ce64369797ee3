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

}  // namespace

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
