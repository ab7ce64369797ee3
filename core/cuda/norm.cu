// RMSNorm kernels: one block per row for y and dx (block reductions over the row), one thread per
// column for dw (loops rows in order: deterministic, no atomics).
#include "core/cuda/block_reduce.h"
#include "core/cuda/launch.h"
#include "core/cuda/norm.h"

namespace moe::cuda {
namespace {

template <class T>
__global__ void rms_norm_forward_kernel(const T* x, const T* w, T* y, float* rstd, long cols, float eps) {
  const T* xr = x + blockIdx.x * cols;
  T* yr = y + blockIdx.x * cols;
  float ss = 0.0f;
  for (long j = threadIdx.x; j < cols; j += blockDim.x) {
    float v = to_float(xr[j]);
    ss += v * v;
  }
  const float r = rsqrtf(block_sum(ss) / float(cols) + eps);
  for (long j = threadIdx.x; j < cols; j += blockDim.x) yr[j] = from_float<T>(to_float(xr[j]) * r * to_float(w[j]));
  if (threadIdx.x == 0) rstd[blockIdx.x] = r;
}

// dx_j = r * w_j * dy_j - x_j * r^3 / cols * sum_k(w_k * dy_k * x_k)
template <class T>
__global__ void rms_norm_backward_dx_kernel(const T* dy, const T* x, const T* w, const float* rstd, T* dx, long cols) {
  const long off = blockIdx.x * cols;
  const float r = rstd[blockIdx.x];
  float dot = 0.0f;
  for (long j = threadIdx.x; j < cols; j += blockDim.x) dot += to_float(w[j]) * to_float(dy[off + j]) * to_float(x[off + j]);
  const float c = block_sum(dot) * r * r * r / float(cols);
  for (long j = threadIdx.x; j < cols; j += blockDim.x)
    dx[off + j] = from_float<T>(r * to_float(w[j]) * to_float(dy[off + j]) - to_float(x[off + j]) * c);
}

template <class T>
__global__ void rms_norm_backward_dw_kernel(const T* dy, const T* x, const float* rstd, float* dw, long rows, long cols) {
  long j = blockIdx.x * long(blockDim.x) + threadIdx.x;
  if (j >= cols) return;
  float s = 0.0f;
  for (long i = 0; i < rows; ++i) s += to_float(dy[i * cols + j]) * to_float(x[i * cols + j]) * rstd[i];
  dw[j] = s;
}

}  // namespace

template <class T>
void rms_norm_forward(const T* x, const T* w, T* y, float* rstd, long rows, long cols, float eps, cudaStream_t stream) {
  MOE_CHECK(rows >= 0 && cols > 0, "cuda::rms_norm_forward", "bad shape [", rows, ", ", cols, "]");
  if (rows)
    MOE_LAUNCH(rms_norm_forward_kernel<device_t<T>>, unsigned(rows), row_block_threads(cols), 0, stream, dev(x), dev(w),
               dev(y), rstd, cols, eps);
}

template <class T>
void rms_norm_backward(const T* dy, const T* x, const T* w, const float* rstd, T* dx, float* dw, long rows, long cols,
                       cudaStream_t stream) {
  MOE_CHECK(rows >= 0 && cols > 0, "cuda::rms_norm_backward", "bad shape [", rows, ", ", cols, "]");
  if (rows)
    MOE_LAUNCH(rms_norm_backward_dx_kernel<device_t<T>>, unsigned(rows), row_block_threads(cols), 0, stream, dev(dy),
               dev(x), dev(w), rstd, dev(dx), cols);
  MOE_LAUNCH(rms_norm_backward_dw_kernel<device_t<T>>, ceil_div(cols, 128), 128, 0, stream, dev(dy), dev(x), rstd, dw,
             rows, cols);
}

template void rms_norm_forward<float>(const float*, const float*, float*, float*, long, long, float, cudaStream_t);
template void rms_norm_forward<bf16>(const bf16*, const bf16*, bf16*, float*, long, long, float, cudaStream_t);
template void rms_norm_backward<float>(const float*, const float*, const float*, const float*, float*, float*, long,
                                       long, cudaStream_t);
template void rms_norm_backward<bf16>(const bf16*, const bf16*, const bf16*, const float*, bf16*, float*, long, long,
                                      cudaStream_t);

}  // namespace moe::cuda
