// Constructors of the individual strategies (one .cpp each). make_balancer (registry.cpp)
// validates the MoeConfig first; these assume valid settings.
#pragma once
#include <memory>

#include "layers/moe/balance/balancer.h"
#include "layers/moe/balance/topk_routing.h"

namespace moe {

std::unique_ptr<Balancer> make_none_balancer(const MoeConfig& cfg);
std::unique_ptr<Balancer> make_aux_loss_balancer(const MoeConfig& cfg);
std::unique_ptr<Balancer> make_loss_free_balancer(const MoeConfig& cfg);
std::unique_ptr<Balancer> make_sinkhorn_balancer(const MoeConfig& cfg);
std::unique_ptr<Balancer> make_ssr_balancer(const MoeConfig& cfg);
std::unique_ptr<Balancer> make_bip_balancer(const MoeConfig& cfg);
std::unique_ptr<Balancer> make_quantile_balancer(const MoeConfig& cfg);
std::unique_ptr<Balancer> make_expert_choice_balancer(const MoeConfig& cfg);
std::unique_ptr<Balancer> make_null_experts_balancer(const MoeConfig& cfg);
std::unique_ptr<Balancer> make_top_p_balancer(const MoeConfig& cfg);

// Gate options of a token-choice strategy with k choices per token: renormalized when the
// recipe asks and k > 1 (with k = 1 a renormalized gate would be 1 and cut the router's grad).
inline GateOptions token_choice_gates(const MoeConfig& cfg) {
  return GateOptions{cfg.renormalize_gates && cfg.top_k > 1, cfg.gate_scale};
}

// Copies one named vector out of a saved state, checking its length (load_state's errors).
std::vector<double> state_entry(const std::map<std::string, std::vector<double>>& s, const std::string& key,
                                size_t expected_len, const char* strategy);

}  // namespace moe
