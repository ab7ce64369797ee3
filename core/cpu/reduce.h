// Reductions: sums and means over dims (with keepdim), sum_to for broadcast backward, max.
#pragma once
#include <vector>

#include "core/tensor.h"

namespace moe {

Tensor sum(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim = false);
Tensor mean(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim = false);
Tensor sum_all(const Tensor& x);   // 0-dim result
Tensor mean_all(const Tensor& x);  // 0-dim result
// Sums a broadcast result back down to `shape` (the backward of broadcasting).
Tensor sum_to(const Tensor& x, const Shape& shape);
// Max over one dim (values only, no grad): used for numerics, not for training losses.
Tensor amax(const Tensor& x, int64_t dim, bool keepdim = false);

}  // namespace moe
