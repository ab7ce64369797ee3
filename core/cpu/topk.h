// Top-k along the last dim. Ties go to the lower index, so results are deterministic.
#pragma once
#include "core/tensor.h"

namespace moe {

struct TopK {
  Tensor values;   // differentiable (gradient flows to the selected entries)
  Tensor indices;  // i64
};

// Sorted descending. k must be in [1, x.size(-1)].
TopK topk(const Tensor& x, int64_t k);

}  // namespace moe
