// RoPE kernel: one thread per rotated pair; forward and backward are the same kernel with the
// sign of the angle flipped.
#include <cmath>

#include "core/cuda/launch.h"
#include "core/cuda/rope.h"

namespace moe::cuda {
namespace {

template <class T>
__global__ void rope_kernel(const T* x, T* out, long seq, long heads, long head_dim, double theta, int64_t pos_offset,
                            double sign, long pairs_total) {
  const long half = head_dim / 2;
  for (long p = blockIdx.x * long(blockDim.x) + threadIdx.x; p < pairs_total; p += long(gridDim.x) * blockDim.x) {
    const long i = p % half, row = p / half;  // row = ((b * seq + s) * heads + h)
    const long s = (row / heads) % seq;
    const double angle = sign * double(pos_offset + s) * pow(theta, -2.0 * double(i) / double(head_dim));
    const float c = float(cos(angle)), sn = float(sin(angle));
    const long base = row * head_dim;
    const float a = to_float(x[base + i]), b = to_float(x[base + i + half]);
    out[base + i] = from_float<T>(a * c - b * sn);
    out[base + i + half] = from_float<T>(a * sn + b * c);
  }
}

template <class T>
void rope_launch(const T* x, T* out, long batch, long seq, long heads, long head_dim, double theta, int64_t pos_offset,
                 double sign, cudaStream_t stream, const char* op) {
  MOE_CHECK(head_dim > 0 && head_dim % 2 == 0, op, "head_dim must be even and positive, got ", head_dim);
  MOE_CHECK(batch >= 0 && seq >= 0 && heads >= 0, op, "bad shape [", batch, ", ", seq, ", ", heads, ", ", head_dim, "]");
  const long pairs = batch * seq * heads * (head_dim / 2);
  if (pairs == 0) return;
  unsigned blocks = ceil_div(pairs, 256);
  if (blocks > 4096) blocks = 4096;
  MOE_LAUNCH(rope_kernel<device_t<T>>, blocks, 256, 0, stream, dev(x), dev(out), seq, heads, head_dim, theta,
             pos_offset, sign, pairs);
}

}  // namespace

template <class T>
void rope_forward(const T* x, T* out, long batch, long seq, long heads, long head_dim, double theta, int64_t pos_offset,
                  cudaStream_t stream) {
  rope_launch(x, out, batch, seq, heads, head_dim, theta, pos_offset, 1.0, stream, "cuda::rope_forward");
}
template <class T>
void rope_backward(const T* dout, T* dx, long batch, long seq, long heads, long head_dim, double theta,
                   int64_t pos_offset, cudaStream_t stream) {
  rope_launch(dout, dx, batch, seq, heads, head_dim, theta, pos_offset, -1.0, stream, "cuda::rope_backward");
}

template void rope_forward<float>(const float*, float*, long, long, long, long, double, int64_t, cudaStream_t);
template void rope_forward<bf16>(const bf16*, bf16*, long, long, long, long, double, int64_t, cudaStream_t);
template void rope_backward<float>(const float*, float*, long, long, long, long, double, int64_t, cudaStream_t);
template void rope_backward<bf16>(const bf16*, bf16*, long, long, long, long, double, int64_t, cudaStream_t);

}  // namespace moe::cuda
