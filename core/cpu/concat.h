// Concatenation and splitting along a dim, forward and backward.
#pragma once
#include <vector>

#include "core/tensor.h"

namespace moe {

Tensor concat(const std::vector<Tensor>& xs, int64_t dim);
std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim);

}  // namespace moe
