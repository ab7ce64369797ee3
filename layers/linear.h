// Linear layer: y = x W^T (+ b) with W [out, in] in PyTorch's layout, optional bias.
#pragma once
#include "core/rng.h"
#include "layers/module.h"

namespace moe {

class Linear : public Module {
 public:
  // Weight ~ N(0, init_std^2) drawn from rng; bias (when present) starts at zero.
  Linear(int64_t in_features, int64_t out_features, bool bias, Philox& rng, double init_std,
         DType dtype = DType::f32);

  Tensor forward(const Tensor& x) const;  // x [..., in] -> [..., out]

  const Tensor& weight() const { return weight_; }
  const Tensor& bias() const { return bias_; }  // undefined when built without bias
  int64_t in_features() const { return in_; }
  int64_t out_features() const { return out_; }

 private:
  int64_t in_, out_;
  Tensor weight_, bias_;
};

}  // namespace moe
