// Multi-head causal self-attention with rotary position embeddings (Llama style, no biases):
// wq, wk, wv, wo are [d_model, d_model]; heads split d_model into n_heads x head_dim.
#pragma once
#include <memory>

#include "core/rng.h"
#include "layers/linear.h"
#include "layers/model_config.h"
#include "layers/module.h"

namespace moe {

class Attention : public Module {
 public:
  // wq, wk, wv ~ N(0, init_std^2); wo ~ N(0, output_proj_std(cfg)^2) (see layers/init.h).
  Attention(const ModelConfig& cfg, Philox& rng, DType dtype = DType::f32);

  // x [B, S, D] -> [B, S, D]; position of token s is pos_offset + s (for RoPE).
  Tensor forward(const Tensor& x, int64_t pos_offset = 0) const;

  int64_t n_heads() const { return n_heads_; }
  int64_t head_dim() const { return head_dim_; }

 private:
  int64_t d_model_, n_heads_, head_dim_;
  double rope_theta_;
  std::shared_ptr<Linear> wq_, wk_, wv_, wo_;
};

}  // namespace moe
