// The dense SwiGLU feed-forward block (Llama naming): w2( silu(w1 x) * (w3 x) ), no biases.
// w1 is the gate, w3 the up projection, w2 the down projection.
#pragma once
#include <memory>

#include "core/rng.h"
#include "layers/feed_forward.h"
#include "layers/linear.h"
#include "layers/model_config.h"

namespace moe {

// The hidden size of the dense MLP: cfg.d_ff, or when 0, 8/3 d_model rounded up to a multiple
// of 8 (SwiGLU's three matrices then cost about as much as a 4x GELU MLP's two).
int64_t dense_hidden_size(const ModelConfig& cfg);

class MLP : public FeedForward {
 public:
  // w1, w3 ~ N(0, init_std^2); w2 ~ N(0, output_proj_std(cfg)^2) (see layers/init.h).
  MLP(const ModelConfig& cfg, Philox& rng, DType dtype = DType::f32);
  // An explicit hidden size (MoE experts and shared experts reuse this class).
  MLP(const ModelConfig& cfg, int64_t hidden, Philox& rng, DType dtype = DType::f32);

  Tensor forward(const Tensor& x) override;  // [..., D] -> [..., D]

  int64_t hidden() const { return hidden_; }

 private:
  int64_t hidden_;
  std::shared_ptr<Linear> w1_, w2_, w3_;
};

}  // namespace moe
