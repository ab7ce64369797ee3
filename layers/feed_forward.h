// The FFN slot of a transformer block: a dense SwiGLU MLP or an MoE layer.
#pragma once
#include <vector>

#include "layers/extra_loss.h"
#include "layers/module.h"

namespace moe {

class FeedForward : public Module {
 public:
  // x [B, S, D] -> [B, S, D]
  virtual Tensor forward(const Tensor& x) = 0;
  // Loss terms added by the last forward (aux / z losses of an MoE layer); empty for dense.
  virtual std::vector<ExtraLoss> extra_losses() const { return {}; }
};

}  // namespace moe
