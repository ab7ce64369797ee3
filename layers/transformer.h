// The decoder-only transformer LM: token embedding, N pre-norm blocks, final RMSNorm and an
// LM head (its own [V, D] matrix, or the embedding table when tied_embeddings).
#pragma once
#include <functional>
#include <memory>
#include <utility>
#include <vector>

#include "core/cpu/loss.h"
#include "layers/block.h"
#include "layers/embedding_layer.h"
#include "layers/extra_loss.h"
#include "layers/linear.h"
#include "layers/model_config.h"
#include "layers/rms_norm_layer.h"

namespace moe {

// Builds the FFN of layer `layer_index`, or returns nullptr for a dense SwiGLU MLP there. This
// is how MoE layers enter the model; a factory-built FFN initializes its own weights.
using FfnFactory = std::function<std::shared_ptr<FeedForward>(int layer_index)>;

struct LossOutput {
  Tensor total;  // 0-dim: lm + every extra term's scaled value; what backward() is called on
  Tensor lm;     // 0-dim: mean next-token cross-entropy over targets != ignore_index
  std::vector<std::pair<int, ExtraLoss>> extra;  // (layer index, term) in layer order
};

class TransformerLM : public Module {
 public:
  // Weights are drawn from Philox(seed, stream_id(RngStream::init)) in parameter registration
  // order: tok_emb, then per block norm1 (ones), attn wq wk wv wo, norm2 (ones), ffn w1 w2 w3;
  // norm_f (ones); lm_head. All N(0, init_std^2) except wo and w2: N(0, (init_std /
  // sqrt(2 n_layers))^2) (GPT-2's residual scaling). dtype f64 is the gradient-check path.
  TransformerLM(const ModelConfig& cfg, uint64_t seed, FfnFactory ffn_factory = {}, DType dtype = DType::f32);

  // ids [B, S] (i32 / i64, values in [0, vocab)) -> logits [B, S, V] in the model's dtype.
  Tensor forward(const Tensor& ids);
  // Next-token loss: targets [B, S] are the ids shifted by one by the caller (ignore_index
  // entries do not count), plus every block's ffn extra losses of this forward.
  LossOutput loss(const Tensor& ids, const Tensor& targets, int64_t ignore_index = kIgnoreIndex);

  const ModelConfig& config() const { return cfg_; }
  DType dtype() const { return dtype_; }
  int64_t n_layers() const { return int64_t(blocks_.size()); }
  Block& block(int64_t l) const { return *blocks_.at(size_t(l)); }
  const std::vector<std::shared_ptr<Block>>& blocks() const { return blocks_; }
  const Tensor& lm_head_weight() const;  // the embedding table when tied

 private:
  ModelConfig cfg_;
  DType dtype_;
  std::shared_ptr<Embedding> tok_emb_;
  std::vector<std::shared_ptr<Block>> blocks_;
  std::shared_ptr<RMSNorm> norm_f_;
  std::shared_ptr<Linear> lm_head_;  // null when tied
};

// Checks a config for the dense model; throws naming the offending field.
void validate_model_config(const ModelConfig& cfg);

}  // namespace moe
