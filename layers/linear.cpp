// Linear layer (see linear.h).
#include "layers/linear.h"

#include "core/cpu/matmul.h"
#include "layers/init.h"

namespace moe {

Linear::Linear(int64_t in_features, int64_t out_features, bool bias, Philox& rng, double init_std, DType dtype)
    : in_(in_features), out_(out_features) {
  MOE_CHECK(in_features > 0 && out_features > 0, "Linear", "features must be positive, got in=", in_features,
            " out=", out_features);
  Tensor w = Tensor::empty({out_features, in_features}, dtype);
  init_normal_(w, rng, init_std);
  weight_ = register_parameter("weight", w);
  if (bias) bias_ = register_parameter("bias", Tensor::zeros({out_features}, dtype));
}

Tensor Linear::forward(const Tensor& x) const {
  MOE_CHECK(x.dim() >= 1 && x.size(-1) == in_, "Linear", "input ", x.shape_str(), " does not end in in_features=",
            in_, " (weight ", weight_.shape_str(), ")");
  return linear(x, weight_, bias_);
}

}  // namespace moe
