// Dense SwiGLU MLP (see mlp.h).
#include "layers/mlp.h"

#include "core/cpu/activation.h"
#include "layers/init.h"

namespace moe {

int64_t dense_hidden_size(const ModelConfig& cfg) {
  MOE_CHECK(cfg.d_ff >= 0, "ModelConfig", "d_ff must be >= 0 (0 = 8/3 d_model), got ", cfg.d_ff);
  if (cfg.d_ff > 0) return cfg.d_ff;
  int64_t h = (8 * cfg.d_model + 2) / 3;  // ceil(8 d / 3)
  return (h + 7) / 8 * 8;
}

MLP::MLP(const ModelConfig& cfg, Philox& rng, DType dtype) : MLP(cfg, dense_hidden_size(cfg), rng, dtype) {}

MLP::MLP(const ModelConfig& cfg, int64_t hidden, Philox& rng, DType dtype) : hidden_(hidden) {
  MOE_CHECK(hidden > 0, "MLP", "hidden size must be positive, got ", hidden);
  // Registration order w1, w2, w3 matches Llama's state dict, and fixes the init draw order.
  w1_ = register_module("w1", std::make_shared<Linear>(cfg.d_model, hidden, false, rng, cfg.init_std, dtype));
  w2_ = register_module("w2", std::make_shared<Linear>(hidden, cfg.d_model, false, rng, output_proj_std(cfg), dtype));
  w3_ = register_module("w3", std::make_shared<Linear>(cfg.d_model, hidden, false, rng, cfg.init_std, dtype));
}

Tensor MLP::forward(const Tensor& x) { return w2_->forward(swiglu(w1_->forward(x), w3_->forward(x))); }

}  // namespace moe
