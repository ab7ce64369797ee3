// RMSNorm over the last dim on device pointers: y = x * rstd * w with rstd = 1/sqrt(mean(x^2)+eps).
// Forward saves rstd [rows] (fp32) for backward; dw is accumulated in fp32 in a fixed order.
#pragma once
#include "core/cuda/runtime.h"
#include "core/dtype.h"

namespace moe::cuda {

template <class T>
void rms_norm_forward(const T* x, const T* w, T* y, float* rstd, long rows, long cols, float eps,
                      cudaStream_t stream = nullptr);
// dx [rows, cols] (T) and dw [cols] (fp32, overwritten).
template <class T>
void rms_norm_backward(const T* dy, const T* x, const T* w, const float* rstd, T* dx, float* dw, long rows,
                       long cols, cudaStream_t stream = nullptr);

}  // namespace moe::cuda
