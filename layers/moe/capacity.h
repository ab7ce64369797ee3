// Expert capacity: C = ceil(k T / E * capacity_factor) assignments per expert; the
// over-capacity ones are dropped by score ("probs") or by token position, and counted.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "layers/moe/balance/balancer.h"

namespace moe {

enum class DropPolicy { probs, position };
// Parses MoeConfig::drop_policy; throws naming the key "moe.drop_policy".
DropPolicy parse_drop_policy(const std::string& name);
// Throws naming "moe.capacity_factor" unless unset or a finite value > 0.
void validate_capacity_factor(const std::optional<double>& capacity_factor);

// C = ceil(k T / E * capacity_factor); -1 (no limit) when the factor is unset (dropless).
int64_t expert_capacity(int64_t tokens, int64_t top_k, int64_t num_experts, const std::optional<double>& factor);

struct CapacityResult {
  std::vector<int64_t> kept;  // indices into the routing's assignment list, ascending
  int64_t dropped = 0;        // assignments removed by the capacity limit
  int64_t capacity = -1;      // C per expert; -1 when dropless
};

// Deterministic: "probs" keeps, per expert, the C assignments with the highest score (ties to
// the earlier assignment in the list); "position" keeps, per expert, the C assignments of the
// earliest tokens (ties to the earlier assignment in the list). Dropless keeps everything.
CapacityResult apply_capacity(const Routing& r, int64_t tokens, int64_t top_k, int64_t num_experts,
                              const std::optional<double>& factor, DropPolicy policy);

}  // namespace moe
