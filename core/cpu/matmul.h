// Matrix products through OpenBLAS (sgemm for f32, dgemm for f64), forward and backward.
#pragma once
#include "core/tensor.h"

namespace moe {

// a [..., M, K] x b [K, N] -> [..., M, N]   (b shared by every leading index), or
// a [B, M, K] x b [B, K, N] -> [B, M, N]     (batched: same leading dims on both).
// Transposed views are passed to BLAS as transpose flags, not copied.
Tensor matmul(const Tensor& a, const Tensor& b);

// y = x w^T + bias with x [..., in], w [out, in] (PyTorch's layout), bias [out] or undefined.
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& bias = Tensor());

}  // namespace moe
