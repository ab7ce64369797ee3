// Reductions of a row-major [rows, cols] matrix to fp32: per row (one block per row, warp
// shuffles + shared partials) and per column (one thread per column, fixed order: deterministic).
#pragma once
#include "core/cuda/runtime.h"
#include "core/dtype.h"

namespace moe::cuda {

template <class T>
void row_sum(const T* x, float* out, long rows, long cols, cudaStream_t stream = nullptr);
template <class T>
void col_sum(const T* x, float* out, long rows, long cols, cudaStream_t stream = nullptr);

}  // namespace moe::cuda
