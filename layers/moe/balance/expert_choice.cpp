// Strategy "expert_choice" (Zhou et al. 2022): each expert takes its top-C tokens by score,
// C = ceil(T c / E). Perfect balance by construction; some tokens get no expert, others several.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/autograd.h"
#include "layers/moe/balance/global_batch.h"
#include "layers/moe/balance/strategies.h"

namespace moe {
namespace {

// NON-CAUSAL: which experts a token gets depends on every other token of the batch (the same in
// eval), so it does not fit autoregressive decoding as is; offered for comparison, as published.
// Gates: s of the chosen (token, expert) pairs, not renormalized. Ties go to the lower token.
// Assignments are listed token-major (token order, experts ascending within a token).
// Data parallelism, balance.scope = "global" (default): each expert picks its top C of the global
// micro-batch (every rank's scores gathered in rank order, C from the global token count; every
// rank computes the same picks) and each rank keeps the picks of its own tokens: the single
// process's routing. scope = "local": each expert picks C = ceil(T_rank c / E) of the rank's tokens.
class ExpertChoiceBalancer final : public Balancer {
 public:
  explicit ExpertChoiceBalancer(const MoeConfig& cfg) : cfg_(cfg) {}
  std::string name() const override { return "expert_choice"; }

  Routing select(const RouterOutput& in, Philox&) override {
    check_router_output(in, cfg_.num_experts, "balance.expert_choice");
    const int64_t E = cfg_.num_experts, local_T = in.scores.size(0);
    // The NaN check runs on the gathered batch, so that every rank stops with the same error.
    GlobalRows g = gather_rows(batch_communicator(cfg_.balance.scope), in.scores.detach().contiguous().to_double_vector(),
                               local_T, E, "balance.expert_choice");
    const std::vector<double>& s = g.values;
    const int64_t T = g.total;
    const int64_t C = std::min<int64_t>(T, int64_t(std::ceil(double(T) * cfg_.balance.expert_choice_capacity / double(E))));
    for (size_t i = 0; i < s.size(); ++i)
      MOE_CHECK(!std::isnan(s[i]), "balance.expert_choice", "router scores contain NaN (token ", int64_t(i) / E,
                T == local_T ? "" : " of the global batch", ", expert ", int64_t(i) % E, ")");
    std::vector<uint8_t> chosen(size_t(T * E), 0);
#pragma omp parallel if (T * E >= 65536)  // a team costs more than small batches take
    {
      std::vector<int64_t> order(static_cast<size_t>(T));
#pragma omp for
      for (int64_t e = 0; e < E; ++e) {
        std::iota(order.begin(), order.end(), 0);
        auto better = [&](int64_t a, int64_t b) {
          double va = s[size_t(a * E + e)], vb = s[size_t(b * E + e)];
          return va > vb || (va == vb && a < b);
        };
        std::nth_element(order.begin(), order.begin() + (C - 1), order.end(), better);
        for (int64_t r = 0; r < C; ++r) chosen[size_t(order[size_t(r)] * E + e)] = 1;
      }
    }
    Selection sel;
    sel.reserve(size_t(C * E));
    for (int64_t t = g.offset; t < g.offset + local_T; ++t)
      for (int64_t e = 0; e < E; ++e)
        if (chosen[size_t(t * E + e)]) sel.push(t - g.offset, e, s[size_t(t * E + e)]);
    return build_routing(in.scores, sel, GateOptions{false, cfg_.gate_scale});
  }

 private:
  MoeConfig cfg_;
};

}  // namespace

std::unique_ptr<Balancer> make_expert_choice_balancer(const MoeConfig& cfg) {
  return std::make_unique<ExpertChoiceBalancer>(cfg);
}

}  // namespace moe
