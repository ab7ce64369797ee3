// Element-wise kernels: grid-stride loops, fp32 math, bf16 only at load and store.
// Launched through MOE_LAUNCH so the emulation runs the same source.
#include "core/cuda/elementwise.h"
#include "core/cuda/launch.h"

namespace moe::cuda {
namespace {

constexpr unsigned kThreads = 256;

unsigned grid_for(size_t n) {
  unsigned blocks = ceil_div(n, kThreads);
  return blocks < 1 ? 1 : (blocks > 4096 ? 4096 : blocks);
}

template <class In, class Out>
__global__ void cast_kernel(const In* x, Out* y, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    y[i] = from_float<Out>(to_float(x[i]));
}

enum class Binary { add, mul };

template <class T, Binary op>
__global__ void binary_kernel(const T* a, const T* b, T* out, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    float x = to_float(a[i]), y = to_float(b[i]);
    out[i] = from_float<T>(op == Binary::add ? x + y : x * y);
  }
}

template <class T>
__global__ void scale_kernel(const T* x, float alpha, T* out, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    out[i] = from_float<T>(alpha * to_float(x[i]));
}

__device__ __forceinline__ float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

template <class T>
__global__ void sigmoid_forward_kernel(const T* x, T* y, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    y[i] = from_float<T>(sigmoidf(to_float(x[i])));
}

template <class T>
__global__ void sigmoid_backward_kernel(const T* y, const T* dy, T* dx, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    const float s = to_float(y[i]);
    dx[i] = from_float<T>(to_float(dy[i]) * s * (1.0f - s));
  }
}

template <class T>
__global__ void swiglu_forward_kernel(const T* gate, const T* up, T* out, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    float g = to_float(gate[i]);
    out[i] = from_float<T>(g * sigmoidf(g) * to_float(up[i]));
  }
}

template <class T>
__global__ void swiglu_backward_kernel(const T* gate, const T* up, const T* dout, T* d_gate, T* d_up, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    float g = to_float(gate[i]), u = to_float(up[i]), d = to_float(dout[i]);
    float s = sigmoidf(g);
    d_gate[i] = from_float<T>(d * u * s * (1.0f + g * (1.0f - s)));
    d_up[i] = from_float<T>(d * g * s);
  }
}

}  // namespace

void cast_f32_to_bf16(const float* x, bf16* y, size_t n, cudaStream_t stream) {
  if (n) MOE_LAUNCH((cast_kernel<float, dbf16>), grid_for(n), kThreads, 0, stream, x, dev(y), n);
}
void cast_bf16_to_f32(const bf16* x, float* y, size_t n, cudaStream_t stream) {
  if (n) MOE_LAUNCH((cast_kernel<dbf16, float>), grid_for(n), kThreads, 0, stream, dev(x), y, n);
}

template <class T>
void add(const T* a, const T* b, T* out, size_t n, cudaStream_t stream) {
  if (n) MOE_LAUNCH((binary_kernel<device_t<T>, Binary::add>), grid_for(n), kThreads, 0, stream, dev(a), dev(b), dev(out), n);
}
template <class T>
void mul(const T* a, const T* b, T* out, size_t n, cudaStream_t stream) {
  if (n) MOE_LAUNCH((binary_kernel<device_t<T>, Binary::mul>), grid_for(n), kThreads, 0, stream, dev(a), dev(b), dev(out), n);
}
template <class T>
void scale(const T* x, float alpha, T* out, size_t n, cudaStream_t stream) {
  if (n) MOE_LAUNCH(scale_kernel<device_t<T>>, grid_for(n), kThreads, 0, stream, dev(x), alpha, dev(out), n);
}
template <class T>
void sigmoid_forward(const T* x, T* y, size_t n, cudaStream_t stream) {
  if (n) MOE_LAUNCH(sigmoid_forward_kernel<device_t<T>>, grid_for(n), kThreads, 0, stream, dev(x), dev(y), n);
}
template <class T>
void sigmoid_backward(const T* y, const T* dy, T* dx, size_t n, cudaStream_t stream) {
  if (n) MOE_LAUNCH(sigmoid_backward_kernel<device_t<T>>, grid_for(n), kThreads, 0, stream, dev(y), dev(dy), dev(dx), n);
}
template <class T>
void swiglu_forward(const T* gate, const T* up, T* out, size_t n, cudaStream_t stream) {
  if (n) MOE_LAUNCH(swiglu_forward_kernel<device_t<T>>, grid_for(n), kThreads, 0, stream, dev(gate), dev(up), dev(out), n);
}
template <class T>
void swiglu_backward(const T* gate, const T* up, const T* dout, T* d_gate, T* d_up, size_t n, cudaStream_t stream) {
  if (n)
    MOE_LAUNCH(swiglu_backward_kernel<device_t<T>>, grid_for(n), kThreads, 0, stream, dev(gate), dev(up), dev(dout),
               dev(d_gate), dev(d_up), n);
}

#define MOE_INSTANTIATE(T)                                                                        \
  template void add<T>(const T*, const T*, T*, size_t, cudaStream_t);                            \
  template void mul<T>(const T*, const T*, T*, size_t, cudaStream_t);                            \
  template void scale<T>(const T*, float, T*, size_t, cudaStream_t);                             \
  template void sigmoid_forward<T>(const T*, T*, size_t, cudaStream_t);                           \
  template void sigmoid_backward<T>(const T*, const T*, T*, size_t, cudaStream_t);                \
  template void swiglu_forward<T>(const T*, const T*, T*, size_t, cudaStream_t);                 \
  template void swiglu_backward<T>(const T*, const T*, const T*, T*, T*, size_t, cudaStream_t);
MOE_INSTANTIATE(float)
MOE_INSTANTIATE(bf16)
#undef MOE_INSTANTIATE

}  // namespace moe::cuda
