// RMSNorm layer (see rms_norm_layer.h).
#include "layers/rms_norm_layer.h"

#include "core/cpu/norm.h"

namespace moe {

RMSNorm::RMSNorm(int64_t dim, double eps, DType dtype) : eps_(eps) {
  MOE_CHECK(dim > 0, "RMSNorm", "dim must be positive, got ", dim);
  MOE_CHECK(eps > 0, "RMSNorm", "eps must be positive, got ", eps);
  weight_ = register_parameter("weight", Tensor::ones({dim}, dtype));
}

Tensor RMSNorm::forward(const Tensor& x) const {
  MOE_CHECK(x.dim() >= 1 && x.size(-1) == weight_.size(0), "RMSNorm", "input ", x.shape_str(),
            " does not end in dim=", weight_.size(0));
  return rms_norm(x, weight_, eps_);
}

}  // namespace moe
