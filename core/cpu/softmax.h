// Softmax, log-softmax and logsumexp along one dim, max-shifted for stability.
#pragma once
#include "core/tensor.h"

namespace moe {

Tensor softmax(const Tensor& x, int64_t dim = -1);
Tensor log_softmax(const Tensor& x, int64_t dim = -1);
Tensor logsumexp(const Tensor& x, int64_t dim = -1);  // the dim is removed

}  // namespace moe
