// Row and column sums in fp32. Column sums loop over rows in order in one thread per column,
// so results are bit-identical run to run (no atomics), as the deterministic mode requires.
#include "core/cuda/block_reduce.h"
#include "core/cuda/launch.h"
#include "core/cuda/reduce.h"

namespace moe::cuda {
namespace {

template <class T>
__global__ void row_sum_kernel(const T* x, float* out, long cols) {
  const T* row = x + blockIdx.x * cols;
  float s = 0.0f;
  for (long j = threadIdx.x; j < cols; j += blockDim.x) s += to_float(row[j]);
  s = block_sum(s);
  if (threadIdx.x == 0) out[blockIdx.x] = s;
}

template <class T>
__global__ void col_sum_kernel(const T* x, float* out, long rows, long cols) {
  long j = blockIdx.x * long(blockDim.x) + threadIdx.x;
  if (j >= cols) return;
  float s = 0.0f;
  for (long i = 0; i < rows; ++i) s += to_float(x[i * cols + j]);
  out[j] = s;
}

}  // namespace

template <class T>
void row_sum(const T* x, float* out, long rows, long cols, cudaStream_t stream) {
  MOE_CHECK(rows >= 0 && cols >= 0, "cuda::row_sum", "bad shape [", rows, ", ", cols, "]");
  if (rows) MOE_LAUNCH(row_sum_kernel<device_t<T>>, unsigned(rows), row_block_threads(cols), 0, stream, dev(x), out, cols);
}
template <class T>
void col_sum(const T* x, float* out, long rows, long cols, cudaStream_t stream) {
  MOE_CHECK(rows >= 0 && cols >= 0, "cuda::col_sum", "bad shape [", rows, ", ", cols, "]");
  if (cols) MOE_LAUNCH(col_sum_kernel<device_t<T>>, ceil_div(cols, 128), 128, 0, stream, dev(x), out, rows, cols);
}

template void row_sum<float>(const float*, float*, long, long, cudaStream_t);
template void row_sum<bf16>(const bf16*, float*, long, long, cudaStream_t);
template void col_sum<float>(const float*, float*, long, long, cudaStream_t);
template void col_sum<bf16>(const bf16*, float*, long, long, cudaStream_t);

}  // namespace moe::cuda
