// Multi-head causal self-attention with RoPE (see attention_layer.h).
#include "layers/attention_layer.h"

#include "core/cpu/attention.h"
#include "core/cpu/matmul.h"
#include "core/cpu/rope.h"
#include "layers/init.h"

namespace moe {

Attention::Attention(const ModelConfig& cfg, Philox& rng, DType dtype)
    : d_model_(cfg.d_model), n_heads_(cfg.n_heads), rope_theta_(cfg.rope_theta) {
  MOE_CHECK(cfg.n_heads > 0 && cfg.d_model % cfg.n_heads == 0, "Attention", "d_model=", cfg.d_model,
            " must be a positive multiple of n_heads=", cfg.n_heads);
  head_dim_ = cfg.d_model / cfg.n_heads;
  MOE_CHECK(head_dim_ % 2 == 0, "Attention", "head_dim = d_model / n_heads = ", head_dim_,
            " must be even for RoPE");
  wq_ = register_module("wq", std::make_shared<Linear>(d_model_, d_model_, false, rng, cfg.init_std, dtype));
  wk_ = register_module("wk", std::make_shared<Linear>(d_model_, d_model_, false, rng, cfg.init_std, dtype));
  wv_ = register_module("wv", std::make_shared<Linear>(d_model_, d_model_, false, rng, cfg.init_std, dtype));
  wo_ = register_module("wo", std::make_shared<Linear>(d_model_, d_model_, false, rng, output_proj_std(cfg), dtype));
}

Tensor Attention::forward(const Tensor& x, int64_t pos_offset) const {
  MOE_CHECK(x.dim() == 3 && x.size(2) == d_model_, "Attention", "expected x [B, S, ", d_model_, "], got ",
            x.shape_str());
  const int64_t B = x.size(0), S = x.size(1);
  const Shape heads{B, S, n_heads_, head_dim_};
  // q, k, v as one op (their input grads summed in one buffer); everything stays in the
  // projections' [B, S, H, Dh] layout: no transposes, no copies.
  std::vector<Tensor> qkv = linear_shared_input(x, {wq_->weight(), wk_->weight(), wv_->weight()});
  Tensor q = rope(qkv[0].reshape(heads), rope_theta_, pos_offset);
  Tensor k = rope(qkv[1].reshape(heads), rope_theta_, pos_offset);
  Tensor v = qkv[2].reshape(heads);
  Tensor o = causal_attention_bshd(q, k, v);  // [B, S, H, Dh]
  return wo_->forward(o.reshape({B, S, d_model_}));
}

}  // namespace moe
