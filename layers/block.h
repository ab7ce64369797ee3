// Pre-norm decoder block: x + attn(norm1(x)), then + ffn(norm2(x)). The FFN slot holds the
// dense MLP or an MoE layer (any FeedForward).
#pragma once
#include <memory>

#include "core/rng.h"
#include "layers/attention_layer.h"
#include "layers/feed_forward.h"
#include "layers/rms_norm_layer.h"

namespace moe {

class Block : public Module {
 public:
  // Draws the attention weights from rng, then, when `ffn` is null, a dense MLP's weights (so
  // the draws follow parameter registration order). A non-null `ffn` (an MoE layer from the
  // model's FfnFactory) comes already initialized by whoever built it.
  Block(const ModelConfig& cfg, Philox& rng, std::shared_ptr<FeedForward> ffn = nullptr, DType dtype = DType::f32);

  Tensor forward(const Tensor& x, int64_t pos_offset = 0);  // [B, S, D] -> [B, S, D]

  Attention& attn() const { return *attn_; }
  FeedForward& ffn() const { return *ffn_; }
  const std::shared_ptr<FeedForward>& ffn_ptr() const { return ffn_; }

 private:
  std::shared_ptr<RMSNorm> norm1_, norm2_;
  std::shared_ptr<Attention> attn_;
  std::shared_ptr<FeedForward> ffn_;
};

}  // namespace moe
