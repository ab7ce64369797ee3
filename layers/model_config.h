// Plain configuration structs of the model and its MoE layers. The recipe parser
// (recipes/) fills them; layers/ reads them. Defaults here are the documented defaults.
#pragma once
#include <cstdint>
#include <optional>
#include <string>

namespace moe {

// How a balancing strategy is set up; every field is documented in recipes/README.md and
// the math in shared BALANCING.md. Fields a strategy does not use are ignored by it.
struct BalanceConfig {
  std::string strategy = "aux_loss";  // none | aux_loss | loss_free | sinkhorn | ssr | bip | quantile |
                                      // expert_choice | null_experts | top_p
  // Batch the strategies coupled across tokens (bip, quantile, sinkhorn, ssr, expert_choice)
  // balance under data parallelism: global (all ranks' micro-batches, exact) | local (each rank's own)
  std::string scope = "global";
  // aux_loss (also used by null_experts / top_p)
  double aux_alpha = 1e-2;
  std::string aux_variant = "micro_batch";  // micro_batch | per_sequence | global
  // loss_free
  double bias_update_rate = 1e-3;           // u
  std::string bias_update = "sign";         // sign | proportional
  // sinkhorn / ssr
  double sinkhorn_temperature = 1.0;        // xi (ssr default 0.05)
  int sinkhorn_max_iters = 100;
  double sinkhorn_tol = 1e-4;
  double ssr_probability = 1e-3;            // p
  // bip / quantile
  int bip_iters = 4;                        // T_bip
  std::string bip_order = "paper";          // paper (update q on the batch, then select) | causal
  double quantile_rate = 1e-3;              // quantile balancing step size for beta
  // expert_choice
  double expert_choice_capacity = 2.0;      // c in C = T c / E
  // null_experts (AdaMoE)
  int num_null_experts = 0;
  double null_aux_alpha = 1e-4;
  // top_p
  double top_p_threshold = 0.4;
  double top_p_entropy_beta = 1e-4;
};

struct MoeConfig {
  int64_t num_experts = 8;
  int64_t top_k = 2;
  int64_t expert_hidden = 0;          // 0: the dense FFN's hidden size
  int64_t num_shared_experts = 0;
  int64_t moe_every = 1;              // MoE in layers l with (l % moe_every) == moe_every - 1
  std::string score_function = "softmax";  // softmax | sigmoid
  bool renormalize_gates = true;      // top-k gates re-scaled to sum 1 (k > 1)
  double gate_scale = 1.0;            // multiplies the gates after renormalization
  double jitter = 0.0;                // multiplicative input jitter eps (0: off), training only
  double z_loss_coef = 0.0;           // router z-loss c_z (0: off; ST-MoE uses 1e-3)
  std::optional<double> capacity_factor;  // unset: dropless
  std::string drop_policy = "probs";  // probs | position
  BalanceConfig balance;
};

struct ModelConfig {
  int64_t vocab_size = 256;
  int64_t d_model = 128;
  int64_t n_layers = 4;
  int64_t n_heads = 4;
  int64_t d_ff = 0;                   // 0: 8/3 d_model rounded up to a multiple of 8 (SwiGLU)
  int64_t max_seq_len = 256;
  double rope_theta = 10000.0;
  double norm_eps = 1e-5;
  bool tied_embeddings = false;
  double init_std = 0.02;
  bool use_moe = false;
  MoeConfig moe;
};

}  // namespace moe
