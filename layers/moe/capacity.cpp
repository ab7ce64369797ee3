// Capacity limiting: per-expert buckets built by counting, then a deterministic choice of
// the kept assignments in each over-full bucket.
#include "layers/moe/capacity.h"

#include <algorithm>
#include <cmath>

namespace moe {

DropPolicy parse_drop_policy(const std::string& name) {
  if (name == "probs") return DropPolicy::probs;
  if (name == "position") return DropPolicy::position;
  MOE_FAIL("moe.drop_policy", "unknown drop policy '", name, "' (expected probs | position)");
}

void validate_capacity_factor(const std::optional<double>& f) {
  MOE_CHECK(!f || (std::isfinite(*f) && *f > 0), "moe.capacity_factor", "must be > 0 (or unset for dropless), got ",
            f ? *f : 0.0);
}

int64_t expert_capacity(int64_t tokens, int64_t top_k, int64_t num_experts, const std::optional<double>& f) {
  if (!f) return -1;
  validate_capacity_factor(f);
  // A relative nudge so that e.g. 2 * 6 / 4 * 1.0 computed as 2.9999999 does not round to 4,
  // nor 3.0000001 to 4: the product is rounded to 1e-9 relative before the ceiling.
  double c = double(top_k) * double(tokens) / double(num_experts) * *f;
  double r = std::round(c);
  if (std::abs(c - r) <= 1e-9 * std::max(1.0, std::abs(c))) c = r;
  return int64_t(std::ceil(c));
}

CapacityResult apply_capacity(const Routing& r, int64_t tokens, int64_t top_k, int64_t num_experts,
                              const std::optional<double>& factor, DropPolicy policy) {
  const char* op = "apply_capacity";
  CapacityResult res;
  const int64_t A = r.expert.numel();
  MOE_CHECK(r.token.numel() == A, op, "token ", r.token.shape_str(), " and expert ", r.expert.shape_str(),
            " must have the same length");
  res.capacity = expert_capacity(tokens, top_k, num_experts, factor);
  if (res.capacity < 0) {
    res.kept.resize(size_t(A));
    for (int64_t a = 0; a < A; ++a) res.kept[size_t(a)] = a;
    return res;
  }
  std::vector<int64_t> ex = r.expert.to(DType::i64).to_vector<int64_t>();
  std::vector<int64_t> tok = r.token.to(DType::i64).to_vector<int64_t>();
  std::vector<double> score;
  if (policy == DropPolicy::probs) {
    MOE_CHECK(r.score.defined() && r.score.numel() == A, op, "drop policy 'probs' needs a score per assignment (", A,
              "), got ", r.score.defined() ? r.score.shape_str() : "none");
    score = r.score.to_double_vector();
  }
  // Buckets per expert in list order (a counting pass: O(A + E)).
  std::vector<int64_t> start(size_t(num_experts) + 1, 0);
  for (int64_t a = 0; a < A; ++a) {
    MOE_CHECK(ex[size_t(a)] >= 0 && ex[size_t(a)] < num_experts, op, "expert id ", ex[size_t(a)], " out of range [0, ",
              num_experts, ")");
    ++start[size_t(ex[size_t(a)]) + 1];
  }
  for (int64_t e = 0; e < num_experts; ++e) start[size_t(e) + 1] += start[size_t(e)];
  std::vector<int64_t> bucket(static_cast<size_t>(A));
  std::vector<int64_t> fill(start.begin(), start.end() - 1);
  for (int64_t a = 0; a < A; ++a) bucket[size_t(fill[size_t(ex[size_t(a)])]++)] = a;

  std::vector<char> keep(size_t(A), 1);
  for (int64_t e = 0; e < num_experts; ++e) {
    auto b = bucket.begin() + start[size_t(e)], end = bucket.begin() + start[size_t(e) + 1];
    int64_t n = end - b;
    if (n <= res.capacity) continue;
    // A strict total order, so the kept set does not depend on the selection algorithm.
    auto before = [&](int64_t x, int64_t y) {
      if (policy == DropPolicy::probs) {
        if (score[size_t(x)] != score[size_t(y)]) return score[size_t(x)] > score[size_t(y)];
      } else if (tok[size_t(x)] != tok[size_t(y)]) {
        return tok[size_t(x)] < tok[size_t(y)];
      }
      return x < y;
    };
    std::nth_element(b, b + res.capacity, end, before);
    for (auto it = b + res.capacity; it != end; ++it) keep[size_t(*it)] = 0;
    res.dropped += n - res.capacity;
  }
  res.kept.reserve(size_t(A - res.dropped));
  for (int64_t a = 0; a < A; ++a)
    if (keep[size_t(a)]) res.kept.push_back(a);
  return res;
}

}  // namespace moe
