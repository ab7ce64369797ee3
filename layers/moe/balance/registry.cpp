// make_balancer: validates a MoeConfig's routing settings, naming the recipe key of any bad one,
// and builds the strategy it names. Also the state-loading helper the strategies share.
#include <cmath>
#include <functional>
#include <utility>

#include "layers/moe/balance/strategies.h"

namespace moe {
namespace {

using Factory = std::unique_ptr<Balancer> (*)(const MoeConfig&);

// Recipe keys of the settings, as named in errors (the recipe schema maps them onto MoeConfig).
const std::vector<std::pair<std::string, Factory>>& strategies() {
  static const std::vector<std::pair<std::string, Factory>> table = {
      {"none", make_none_balancer},         {"aux_loss", make_aux_loss_balancer},
      {"loss_free", make_loss_free_balancer}, {"sinkhorn", make_sinkhorn_balancer},
      {"ssr", make_ssr_balancer},           {"bip", make_bip_balancer},
      {"quantile", make_quantile_balancer}, {"expert_choice", make_expert_choice_balancer},
      {"null_experts", make_null_experts_balancer}, {"top_p", make_top_p_balancer}};
  return table;
}

std::string join(const std::vector<std::string>& v) {
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + v[i];
  return out;
}

void check_one_of(const std::string& key, const std::string& value, const std::vector<std::string>& allowed) {
  for (const auto& a : allowed)
    if (a == value) return;
  MOE_FAIL(key.c_str(), "unknown value '", value, "' (expected one of: ", join(allowed), ")");
}

void check_range(const std::string& key, double v, double lo, double hi, bool lo_open, const char* expect) {
  bool ok = std::isfinite(v) && (lo_open ? v > lo : v >= lo) && v <= hi;
  MOE_CHECK(ok, key.c_str(), "must be ", expect, ", got ", v);
}

void validate(const MoeConfig& cfg) {
  const BalanceConfig& b = cfg.balance;
  const double inf = INFINITY;
  MOE_CHECK(cfg.num_experts >= 1, "router.num_experts", "must be >= 1, got ", cfg.num_experts);
  check_one_of("router.score_function", cfg.score_function, {"softmax", "sigmoid"});
  check_one_of("balance.scope", b.scope, {"global", "local"});
  check_range("router.gate_scale", cfg.gate_scale, 0, inf, true, "> 0");
  const int64_t outputs = cfg.num_experts + (b.strategy == "null_experts" ? b.num_null_experts : 0);
  MOE_CHECK(cfg.top_k >= 1 && cfg.top_k <= outputs, "router.top_k", "must be in [1, ", outputs,
            "] (the number of router outputs", b.strategy == "null_experts" ? ", null experts included" : "",
            "), got ", cfg.top_k);

  check_range("router.aux_alpha", b.aux_alpha, 0, inf, false, ">= 0");
  check_one_of("router.aux_variant", b.aux_variant, {"micro_batch", "per_sequence", "global"});
  check_range("router.bias_update_rate", b.bias_update_rate, 0, inf, false, ">= 0");
  check_one_of("router.bias_update", b.bias_update, {"sign", "proportional"});
  check_range("router.sinkhorn_temperature", b.sinkhorn_temperature, 0, inf, true, "> 0");
  MOE_CHECK(b.sinkhorn_max_iters >= 1, "router.sinkhorn_max_iters", "must be >= 1, got ", b.sinkhorn_max_iters);
  check_range("router.sinkhorn_tol", b.sinkhorn_tol, 0, inf, false, ">= 0");
  check_range("router.ssr_probability", b.ssr_probability, 0, 1, false, "in [0, 1]");
  MOE_CHECK(b.bip_iters >= 1, "router.bip_iters", "must be >= 1, got ", b.bip_iters);
  check_one_of("router.bip_order", b.bip_order, {"paper", "causal"});
  check_range("router.quantile_rate", b.quantile_rate, 0, 1, true, "in (0, 1]");
  check_range("router.expert_choice_capacity", b.expert_choice_capacity, 0, double(cfg.num_experts), true,
              "in (0, num_experts] (C = T c / E tokens per expert, at most T)");
  MOE_CHECK(b.num_null_experts >= 0, "router.num_null_experts", "must be >= 0, got ", b.num_null_experts);
  check_range("router.null_aux_alpha", b.null_aux_alpha, 0, inf, false, ">= 0");
  check_range("router.top_p_threshold", b.top_p_threshold, 0, 1, true, "in (0, 1]");
  check_range("router.top_p_entropy_beta", b.top_p_entropy_beta, 0, inf, false, ">= 0");

  if (b.strategy == "null_experts")
    MOE_CHECK(b.num_null_experts >= 1, "router.num_null_experts", "must be >= 1 for router.balance = null_experts, got ",
              b.num_null_experts);
  // Both read the scores as a distribution over experts (a cumulative sum / a shared softmax).
  if (b.strategy == "null_experts" || b.strategy == "top_p")
    MOE_CHECK(cfg.score_function == "softmax", "router.score_function", "must be softmax for router.balance = ",
              b.strategy, ", got ", cfg.score_function);
}

}  // namespace

std::unique_ptr<Balancer> make_balancer(const MoeConfig& cfg) {
  std::vector<std::string> names;
  for (const auto& [name, factory] : strategies()) {
    if (name == cfg.balance.strategy) {
      validate(cfg);
      return factory(cfg);
    }
    names.push_back(name);
  }
  MOE_FAIL("router.balance", "unknown strategy '", cfg.balance.strategy, "' (expected one of: ", join(names), ")");
}

std::vector<double> state_entry(const std::map<std::string, std::vector<double>>& s, const std::string& key,
                                size_t expected_len, const char* strategy) {
  auto it = s.find(key);
  MOE_CHECK(it != s.end(), "balance.load_state", strategy, " state has no '", key, "'");
  MOE_CHECK(it->second.size() == expected_len, "balance.load_state", strategy, " state '", key, "' has ",
            it->second.size(), " entries, expected ", expected_len);
  return it->second;
}

}  // namespace moe
