// y = x * scale + row broadcast over the rows: one grid-stride loop (see row_shift.h).
#include "core/cuda/row_shift.h"

#include "core/cuda/launch.h"

namespace moe::cuda {
namespace {

constexpr unsigned kThreads = 256;

__global__ void scale_add_row_kernel(const float* x, double scale, const double* row, float* y, long rows, int cols) {
  const long n = rows * cols;
  for (long i = blockIdx.x * long(blockDim.x) + threadIdx.x; i < n; i += long(gridDim.x) * blockDim.x)
    y[i] = float(double(x[i]) * scale + row[i % cols]);
}

}  // namespace

void scale_add_row(const float* x, double scale, const double* row, float* y, long rows, int cols,
                   cudaStream_t stream) {
  MOE_CHECK(rows >= 0 && cols > 0, "cuda::scale_add_row", "bad shape [", rows, ", ", cols, "]");
  const size_t n = size_t(rows) * size_t(cols);
  if (n == 0) return;
  unsigned blocks = ceil_div(n, kThreads);
  if (blocks > 4096) blocks = 4096;
  MOE_LAUNCH(scale_add_row_kernel, blocks, kThreads, 0, stream, x, scale, row, y, rows, cols);
}

}  // namespace moe::cuda
