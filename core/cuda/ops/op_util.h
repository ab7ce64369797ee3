// Small helpers shared by the backend's op files (core/cuda/ops/*_ops.cpp): argument checks and
// typed device pointers of tensors.
#pragma once
#include <cstdint>

#include "core/tensor.h"

namespace moe::cuda {

// t on the device, fp32, [rows, cols] (2-D); names the op otherwise.
inline void check_f32_2d(const Tensor& t, const char* op, const char* what) {
  MOE_CHECK(t.defined() && t.device() == Device::cuda, op, what, " ", t.defined() ? t.shape_str() : "(undefined)",
            " is not on the cuda device");
  MOE_CHECK(t.dtype() == DType::f32 && t.dim() == 2, op, what, " must be a [T, E] fp32 matrix, got ",
            dtype_name(t.dtype()), " ", t.shape_str());
}

// An incoming gradient as a contiguous fp32 tensor.
inline Tensor grad_f32(const Tensor& g) { return (g.dtype() == DType::f32 ? g : g.to(DType::f32)).contiguous(); }

inline const float* cf(const Tensor& t) { return t.device_data<float>(); }
inline float* mf(const Tensor& t) { return t.device_data<float>(); }
inline const int32_t* ci(const Tensor& t) { return t.device_data<int32_t>(); }

}  // namespace moe::cuda
