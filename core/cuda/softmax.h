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

}  // namespace moe::cuda
