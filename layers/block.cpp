// Pre-norm decoder block (see block.h).
#include "layers/block.h"

#include "core/cpu/elementwise.h"
#include "layers/mlp.h"

namespace moe {

Block::Block(const ModelConfig& cfg, Philox& rng, std::shared_ptr<FeedForward> ffn, DType dtype) {
  // Registration order fixes the parameter names' order: norm1, attn, norm2, ffn.
  norm1_ = register_module("norm1", std::make_shared<RMSNorm>(cfg.d_model, cfg.norm_eps, dtype));
  attn_ = register_module("attn", std::make_shared<Attention>(cfg, rng, dtype));
  norm2_ = register_module("norm2", std::make_shared<RMSNorm>(cfg.d_model, cfg.norm_eps, dtype));
  if (!ffn) ffn = std::make_shared<MLP>(cfg, rng, dtype);
  ffn_ = register_module("ffn", std::move(ffn));
}

Tensor Block::forward(const Tensor& x, int64_t pos_offset) {
  Tensor h = add(x, attn_->forward(norm1_->forward(x), pos_offset));
  return add(h, ffn_->forward(norm2_->forward(h)));
}

}  // namespace moe
