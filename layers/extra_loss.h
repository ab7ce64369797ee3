// A loss term a layer adds to the training objective (aux loss, z-loss, ...), with its
// unscaled value for logging.
#pragma once
#include <string>

#include "core/tensor.h"

namespace moe {

struct ExtraLoss {
  std::string name;  // e.g. "aux", "z", "entropy"
  Tensor scaled;     // 0-dim, differentiable, coefficient applied: added to the training loss
  double unscaled;   // the same term without its coefficient, for logging
};

}  // namespace moe
