// Global-norm gradient clipping on device pointers without a host round trip: accumulate the
// sum of squares of every gradient, turn it into a clip coefficient, scale by it on the device.
#pragma once
#include <cstddef>

#include "core/cuda/runtime.h"
#include "core/dtype.h"

namespace moe::cuda {

// *sum_sq += sum(x^2) over n elements (fp32, fixed reduction order: deterministic).
template <class T>
void accumulate_sum_squares(const T* x, size_t n, float* sum_sq, cudaStream_t stream = nullptr);
// norm[0] = sqrt(*sum_sq); coef[0] = min(1, max_norm / (norm + 1e-6)), as torch's clip_grad_norm_.
void clip_coefficient(const float* sum_sq, float max_norm, float* norm, float* coef, cudaStream_t stream = nullptr);
// x *= coef[0], in place.
template <class T>
void scale_by_device_scalar(T* x, const float* coef, size_t n, cudaStream_t stream = nullptr);

}  // namespace moe::cuda
