// Softmax over the last dim of [rows, cols] on device pointers (max-shifted, fp32 math) and its
// backward dx = y * (dy - sum(dy * y)).
#pragma once
#include "core/cuda/runtime.h"
#include "core/dtype.h"

namespace moe::cuda {

template <class T>
void softmax_forward(const T* x, T* y, long rows, long cols, cudaStream_t stream = nullptr);
template <class T>
void softmax_backward(const T* y, const T* dy, T* dx, long rows, long cols, cudaStream_t stream = nullptr);

// Row normalization of non-negative x [rows, cols] (fp32): y = x / sum_j x_j (the aux loss's
// probabilities of sigmoid scores); backward dx_j = (dy_j - sum_i dy_i y_i) / sum_i x_i.
void row_normalize_forward(const float* x, float* y, long rows, long cols, cudaStream_t stream = nullptr);
void row_normalize_backward(const float* x, const float* y, const float* dy, float* dx, long rows, long cols,
                            cudaStream_t stream = nullptr);

}  // namespace moe::cuda
