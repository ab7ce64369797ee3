// Indexing ops: gather / scatter-add along a dim, index-select / index-add of whole slices.
#pragma once
#include "core/tensor.h"

namespace moe {

// out[i][j] = x[i][index[i][j]] (dim = 1 shown); index has x's rank, i64 or i32.
Tensor gather(const Tensor& x, int64_t dim, const Tensor& index);
// out = base; out[i][index[i][j]] += src[i][j] (dim = 1 shown). Differentiable in base and src.
Tensor scatter_add(const Tensor& base, int64_t dim, const Tensor& index, const Tensor& src);
// Slices of x along dim picked by a 1-d index: out.size(dim) = index.numel().
Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index);
// out = base; out.select(dim, index[i]) += src.select(dim, i). Differentiable in base and src.
Tensor index_add(const Tensor& base, int64_t dim, const Tensor& index, const Tensor& src);

}  // namespace moe
