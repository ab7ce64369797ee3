// Decoder-only transformer LM (see transformer.h).
#include "layers/transformer.h"

#include <string>

#include "core/cpu/elementwise.h"
#include "core/cpu/matmul.h"

namespace moe {

void validate_model_config(const ModelConfig& cfg) {
  MOE_CHECK(cfg.vocab_size > 0, "ModelConfig", "vocab_size must be positive, got ", cfg.vocab_size);
  MOE_CHECK(cfg.d_model > 0, "ModelConfig", "d_model must be positive, got ", cfg.d_model);
  MOE_CHECK(cfg.n_layers > 0, "ModelConfig", "n_layers must be positive, got ", cfg.n_layers);
  MOE_CHECK(cfg.n_heads > 0 && cfg.d_model % cfg.n_heads == 0, "ModelConfig", "d_model=", cfg.d_model,
            " must be a multiple of n_heads=", cfg.n_heads);
  MOE_CHECK((cfg.d_model / cfg.n_heads) % 2 == 0, "ModelConfig", "head dim d_model/n_heads=",
            cfg.d_model / cfg.n_heads, " must be even (RoPE rotates pairs)");
  MOE_CHECK(cfg.d_ff >= 0, "ModelConfig", "d_ff must be >= 0 (0 = 8/3 d_model), got ", cfg.d_ff);
  MOE_CHECK(cfg.max_seq_len > 0, "ModelConfig", "max_seq_len must be positive, got ", cfg.max_seq_len);
  MOE_CHECK(cfg.rope_theta > 0, "ModelConfig", "rope_theta must be positive, got ", cfg.rope_theta);
  MOE_CHECK(cfg.norm_eps > 0, "ModelConfig", "norm_eps must be positive, got ", cfg.norm_eps);
  MOE_CHECK(cfg.init_std > 0, "ModelConfig", "init_std must be positive, got ", cfg.init_std);
}

TransformerLM::TransformerLM(const ModelConfig& cfg, uint64_t seed, FfnFactory ffn_factory, DType dtype)
    : cfg_(cfg), dtype_(dtype) {
  validate_model_config(cfg);
  MOE_CHECK(dtype == DType::f32 || dtype == DType::f64, "TransformerLM", "dtype must be f32 or f64, got ",
            dtype_name(dtype));
  MOE_CHECK(!cfg.use_moe || ffn_factory, "TransformerLM",
            "ModelConfig.use_moe is set but no FfnFactory builds the MoE layers");
  Philox rng(seed, stream_id(RngStream::init));
  tok_emb_ = register_module("tok_emb", std::make_shared<Embedding>(cfg.vocab_size, cfg.d_model, rng, cfg.init_std,
                                                                      dtype));
  for (int l = 0; l < int(cfg.n_layers); ++l) {
    std::shared_ptr<FeedForward> ffn = ffn_factory ? ffn_factory(l) : nullptr;
    blocks_.push_back(
        register_module("blocks." + std::to_string(l), std::make_shared<Block>(cfg, rng, std::move(ffn), dtype)));
  }
  norm_f_ = register_module("norm_f", std::make_shared<RMSNorm>(cfg.d_model, cfg.norm_eps, dtype));
  if (!cfg.tied_embeddings)
    lm_head_ = register_module("lm_head",
                               std::make_shared<Linear>(cfg.d_model, cfg.vocab_size, false, rng, cfg.init_std, dtype));
}

const Tensor& TransformerLM::lm_head_weight() const {
  return lm_head_ ? lm_head_->weight() : tok_emb_->weight();
}

Tensor TransformerLM::forward(const Tensor& ids) {
  MOE_CHECK(ids.dim() == 2, "TransformerLM", "expected ids [B, S], got ", ids.shape_str());
  MOE_CHECK(ids.dtype() == DType::i32 || ids.dtype() == DType::i64, "TransformerLM",
            "ids must be i32 or i64, got ", dtype_name(ids.dtype()));
  MOE_CHECK(ids.size(1) <= cfg_.max_seq_len, "TransformerLM", "sequence length ", ids.size(1),
            " exceeds max_seq_len=", cfg_.max_seq_len);
  Tensor h = tok_emb_->forward(ids);  // [B, S, D]
  for (auto& block : blocks_) h = block->forward(h);
  h = norm_f_->forward(h);
  return linear(h, lm_head_weight());
}

LossOutput TransformerLM::loss(const Tensor& ids, const Tensor& targets, int64_t ignore_index) {
  MOE_CHECK(targets.shape() == ids.shape(), "TransformerLM::loss", "targets ", targets.shape_str(),
            " must have the shape of ids ", ids.shape_str());
  Tensor logits = forward(ids);
  const int64_t n = ids.numel();
  LossOutput out;
  out.lm = cross_entropy(logits.reshape({n, cfg_.vocab_size}), targets.reshape({n}), ignore_index);
  // On the device the loss comes to the host (one element, differentiable): the routers' extra
  // losses are host scalars (balancing math runs on the host) and the trainer reads it anyway.
  out.lm = out.lm.to(Device::cpu);
  out.total = out.lm;
  for (size_t l = 0; l < blocks_.size(); ++l) {
    for (ExtraLoss& e : blocks_[l]->ffn().extra_losses()) {
      MOE_CHECK(e.scaled.defined() && e.scaled.numel() == 1, "TransformerLM::loss", "extra loss '", e.name,
                "' of layer ", l, " must be a one-element tensor");
      out.total = add(out.total, e.scaled.reshape({}).to(out.total.dtype()));
      out.extra.emplace_back(int(l), std::move(e));
    }
  }
  return out;
}

}  // namespace moe
