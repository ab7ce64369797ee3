// Embedding lookup: rows of a [V, D] table by integer ids; backward scatter-adds into rows.
#pragma once
#include "core/tensor.h"

namespace moe {

// weight [V, D], ids of any shape (i32 or i64) -> [ids..., D]. Out-of-range ids are an error.
Tensor embedding(const Tensor& weight, const Tensor& ids);

}  // namespace moe
