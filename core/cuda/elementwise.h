// Element-wise kernels on device pointers: bf16 <-> fp32 casts, add / mul / scale, SwiGLU forward
// and backward. T is float or moe::bf16 (fp32 math, rounded to bf16 on store).
#pragma once
#include <cstddef>

#include "core/cuda/runtime.h"
#include "core/dtype.h"

namespace moe::cuda {

void cast_f32_to_bf16(const float* x, bf16* y, size_t n, cudaStream_t stream = nullptr);
void cast_bf16_to_f32(const bf16* x, float* y, size_t n, cudaStream_t stream = nullptr);

template <class T>
void add(const T* a, const T* b, T* out, size_t n, cudaStream_t stream = nullptr);
template <class T>
void mul(const T* a, const T* b, T* out, size_t n, cudaStream_t stream = nullptr);
template <class T>
void scale(const T* x, float alpha, T* out, size_t n, cudaStream_t stream = nullptr);

// Sigmoid (router scores of sigmoid routing): y = 1 / (1 + exp(-x)); backward dx = dy * y * (1 - y).
template <class T>
void sigmoid_forward(const T* x, T* y, size_t n, cudaStream_t stream = nullptr);
template <class T>
void sigmoid_backward(const T* y, const T* dy, T* dx, size_t n, cudaStream_t stream = nullptr);

// SwiGLU: out = silu(gate) * up. Backward: d_gate = dout * up * silu'(gate), d_up = dout * silu(gate).
template <class T>
void swiglu_forward(const T* gate, const T* up, T* out, size_t n, cudaStream_t stream = nullptr);
template <class T>
void swiglu_backward(const T* gate, const T* up, const T* dout, T* d_gate, T* d_up, size_t n,
                     cudaStream_t stream = nullptr);

}  // namespace moe::cuda
