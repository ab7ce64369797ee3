// RMSNorm layer: a learned per-feature gain (initialized to 1) over the last dim.
#pragma once
#include "layers/module.h"

namespace moe {

class RMSNorm : public Module {
 public:
  RMSNorm(int64_t dim, double eps, DType dtype = DType::f32);

  Tensor forward(const Tensor& x) const;  // x [..., dim] -> same shape

  const Tensor& weight() const { return weight_; }
  double eps() const { return eps_; }

 private:
  Tensor weight_;
  double eps_;
};

}  // namespace moe
