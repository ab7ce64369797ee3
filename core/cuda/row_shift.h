// A row vector added to every row of a matrix, after a scale: SSR's plan gate logits
// y = x / xi + log d1 (layers/moe/balance/ssr.cpp), on device pointers.
#pragma once
#include "core/cuda/runtime.h"

namespace moe::cuda {

// y [rows, cols] = x * scale + row[col]: x, y fp32, row [cols] double; computed in double,
// rounded to fp32 on store. y may alias x.
void scale_add_row(const float* x, double scale, const double* row, float* y, long rows, int cols,
                   cudaStream_t stream = nullptr);

}  // namespace moe::cuda
