// Matrix products through OpenBLAS (sgemm for f32, dgemm for f64), forward and backward.
#pragma once
#include <vector>

#include "core/tensor.h"

namespace moe {

// a [..., M, K] x b [K, N] -> [..., M, N]   (b shared by every leading index), or
// a [B, M, K] x b [B, K, N] -> [B, M, N]     (batched: same leading dims on both).
// Transposed views are passed to BLAS as transpose flags, not copied.
Tensor matmul(const Tensor& a, const Tensor& b);

// y = x w^T + bias with x [..., in], w [out, in] (PyTorch's layout), bias [out] or undefined.
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& bias = Tensor());

// y_i = x w_i^T for several bias-free weights w_i [out_i, in] sharing one input x [..., in]
// (attention's q, k, v projections) -> outputs [..., out_i], contiguous. As one op so that the
// backward sums the inputs' gradient sum_i g_i w_i in one buffer (successive GEMMs with beta = 1,
// no separate additions), on one thread while the other computes the weight gradients.
std::vector<Tensor> linear_shared_input(const Tensor& x, const std::vector<Tensor>& weights);

}  // namespace moe
