// CSR gather / combine kernels of the MoE dispatch: one block per output row, columns over the
// block's threads; sums run in the plan's slot order in fp32, so results do not depend on timing.
#include "core/cuda/block_reduce.h"
#include "core/cuda/launch.h"
#include "core/cuda/moe_gather.h"

namespace moe::cuda {
namespace {

template <class T>
__global__ void gather_rows_kernel(const T* x, const int32_t* index, long dim, T* out) {
  const long p = blockIdx.x;
  const T* src = x + long(index[p]) * dim;
  for (long d = threadIdx.x; d < dim; d += blockDim.x) out[p * dim + d] = src[d];
}

template <class T>
__global__ void csr_combine_kernel(const T* src, const int32_t* row_offsets, const int32_t* slots,
                                   const int32_t* gate_index, const float* gates, long dim, T* out) {
  const long t = blockIdx.x;
  const int32_t s0 = row_offsets[t], s1 = row_offsets[t + 1];
  for (long d = threadIdx.x; d < dim; d += blockDim.x) {
    float acc = 0.0f;
    for (int32_t s = s0; s < s1; ++s) {
      const long p = slots[s];
      const float w = gates ? gates[gate_index[p]] : 1.0f;
      acc += w * to_float(src[p * dim + d]);
    }
    out[t * dim + d] = from_float<T>(acc);
  }
}

template <class T>
__global__ void csr_combine_backward_kernel(const T* dy, const T* src, const int32_t* token, const int32_t* gate_index,
                                            const float* gates, long dim, T* d_src, float* d_gates) {
  const long p = blockIdx.x;
  const T* g = dy + long(token[p]) * dim;
  const float w = gates[gate_index[p]];
  float dot = 0.0f;
  for (long d = threadIdx.x; d < dim; d += blockDim.x) {
    const float gv = to_float(g[d]);
    if (d_src) d_src[p * dim + d] = from_float<T>(w * gv);
    if (d_gates) dot += gv * to_float(src[p * dim + d]);
  }
  if (!d_gates) return;  // uniform over the block: no barrier is skipped by some threads only
  dot = block_sum(dot);
  if (threadIdx.x == 0) d_gates[gate_index[p]] = dot;
}

__global__ void gather_elements_kernel(const float* x, const int32_t* index, long n, float* out) {
  const long a = blockIdx.x * long(blockDim.x) + threadIdx.x;
  if (a < n) out[a] = x[index[a]];
}

__global__ void scatter_elements_kernel(const float* dout, const int32_t* index, long n, float* dx) {
  const long a = blockIdx.x * long(blockDim.x) + threadIdx.x;
  if (a < n) dx[index[a]] = dout[a];
}

constexpr int kElementThreads = 256;

}  // namespace

void gather_elements(const float* x, const int32_t* index, long n, float* out, cudaStream_t stream) {
  MOE_CHECK(n >= 0, "cuda::gather_elements", "n = ", n);
  if (n > 0)
    MOE_LAUNCH(gather_elements_kernel, ceil_div(n, kElementThreads), kElementThreads, 0, stream, x, index, n, out);
}

void scatter_elements(const float* dout, const int32_t* index, long n, float* dx, cudaStream_t stream) {
  MOE_CHECK(n >= 0, "cuda::scatter_elements", "n = ", n);
  if (n > 0)
    MOE_LAUNCH(scatter_elements_kernel, ceil_div(n, kElementThreads), kElementThreads, 0, stream, dout, index, n, dx);
}

template <class T>
void gather_rows(const T* x, const int32_t* index, long rows, long dim, T* out, cudaStream_t stream) {
  MOE_CHECK(rows >= 0 && rows < (long(1) << 31) && dim > 0, "cuda::gather_rows", "rows = ", rows, ", dim = ", dim);
  if (rows > 0)
    MOE_LAUNCH(gather_rows_kernel<device_t<T>>, unsigned(rows), row_block_threads(dim), 0, stream, dev(x), index, dim,
               dev(out));
}

template <class T>
void csr_combine(const T* src, const int32_t* row_offsets, const int32_t* slots, const int32_t* gate_index,
                 const float* gates, long tokens, long dim, T* out, cudaStream_t stream) {
  MOE_CHECK(tokens >= 0 && tokens < (long(1) << 31) && dim > 0, "cuda::csr_combine", "tokens = ", tokens,
            ", dim = ", dim);
  MOE_CHECK(!gates || gate_index, "cuda::csr_combine", "gates given without gate_index");
  if (tokens > 0)
    MOE_LAUNCH(csr_combine_kernel<device_t<T>>, unsigned(tokens), row_block_threads(dim), 0, stream, dev(src),
               row_offsets, slots, gate_index, gates, dim, dev(out));
}

template <class T>
void csr_combine_backward(const T* dy, const T* src, const int32_t* token, const int32_t* gate_index,
                          const float* gates, long rows, long dim, T* d_src, float* d_gates, cudaStream_t stream) {
  MOE_CHECK(rows >= 0 && rows < (long(1) << 31) && dim > 0, "cuda::csr_combine_backward", "rows = ", rows,
            ", dim = ", dim);
  MOE_CHECK(gates && gate_index, "cuda::csr_combine_backward", "needs gates and gate_index");
  if (rows > 0 && (d_src || d_gates))
    MOE_LAUNCH(csr_combine_backward_kernel<device_t<T>>, unsigned(rows), row_block_threads(dim), 0, stream, dev(dy),
               dev(src), token, gate_index, gates, dim, dev(d_src), d_gates);
}

#define MOE_INSTANTIATE(T)                                                                                      \
  template void gather_rows<T>(const T*, const int32_t*, long, long, T*, cudaStream_t);                        \
  template void csr_combine<T>(const T*, const int32_t*, const int32_t*, const int32_t*, const float*, long,   \
                               long, T*, cudaStream_t);                                                         \
  template void csr_combine_backward<T>(const T*, const T*, const int32_t*, const int32_t*, const float*, long, \
                                        long, T*, float*, cudaStream_t);
MOE_INSTANTIATE(float)
MOE_INSTANTIATE(bf16)
#undef MOE_INSTANTIATE

}  // namespace moe::cuda
