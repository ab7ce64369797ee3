// RoPE kernel: one block per position (b, s) at a time. The block forms the position's cos / sin
// per frequency once, in double as the CPU op does, into shared memory, then rotates every head's
// pairs with them: the double pow / cos / sin, which dominated when each of the heads x batch
// threads of a position formed its own, now run head_dim / 2 times per position. Forward and
// backward are the same kernel with the sign of the angle flipped.
#include <cmath>

#include "core/cuda/launch.h"
#include "core/cuda/rope.h"

namespace moe::cuda {
namespace {

constexpr unsigned kThreads = 256;

template <class T>
__global__ void rope_kernel(const T* x, T* out, long positions, long seq, long heads, long head_dim, double theta,
                            int64_t pos_offset, double sign) {
  MOE_DYNAMIC_SHARED(float, table);  // cos of frequency i at table[i], sin at table[half + i]
  const long half = head_dim / 2, pairs = heads * half;
  for (long pos = blockIdx.x; pos < positions; pos += gridDim.x) {  // pos = b * seq + s
    const long s = pos % seq;
    for (long i = threadIdx.x; i < half; i += blockDim.x) {
      const double angle = sign * double(pos_offset + s) * pow(theta, -2.0 * double(i) / double(head_dim));
      table[i] = float(cos(angle));
      table[half + i] = float(sin(angle));
    }
    __syncthreads();
    for (long p = threadIdx.x; p < pairs; p += blockDim.x) {
      const long i = p % half, base = (pos * heads + p / half) * head_dim;
      const float c = table[i], sn = table[half + i];
      const float a = to_float(x[base + i]), b = to_float(x[base + i + half]);
      out[base + i] = from_float<T>(a * c - b * sn);
      out[base + i + half] = from_float<T>(a * sn + b * c);
    }
    __syncthreads();  // the next position overwrites the table
  }
}

template <class T>
void rope_launch(const T* x, T* out, long batch, long seq, long heads, long head_dim, double theta, int64_t pos_offset,
                 double sign, cudaStream_t stream, const char* op) {
  MOE_CHECK(head_dim > 0 && head_dim % 2 == 0 && head_dim <= 8192, op,
            "head_dim must be even, positive and at most 8192, got ", head_dim);
  MOE_CHECK(batch >= 0 && seq >= 0 && heads >= 0, op, "bad shape [", batch, ", ", seq, ", ", heads, ", ", head_dim, "]");
  const long positions = batch * seq;
  if (positions == 0 || heads == 0) return;
  const unsigned blocks = unsigned(positions < 65535 ? positions : 65535);
  MOE_LAUNCH(rope_kernel<device_t<T>>, blocks, kThreads, size_t(head_dim) * sizeof(float), stream, dev(x), dev(out),
             positions, seq, heads, head_dim, theta, pos_offset, sign);
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
