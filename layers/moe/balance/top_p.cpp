// Strategy "top_p" (dynamic routing, arXiv 2403.07652): per token, the smallest prefix of experts
// sorted by score whose cumulative score reaches p; plus alpha * L_aux and beta * entropy.
#include <numeric>

#include "core/autograd.h"
#include "core/cpu/elementwise.h"
#include "core/cpu/reduce.h"
#include "layers/moe/balance/aux_math.h"
#include "layers/moe/balance/strategies.h"

namespace moe {
namespace {

// Gates are the raw s of the kept experts (not renormalized, as published).
// Losses: "aux" = router.aux_alpha * E * sum_i f_i P_i with f_i = load_i / (number of
// assignments), the token count varying per token; "entropy" = router.top_p_entropy_beta *
// mean over tokens of -sum_j s_tj log s_tj: we read the paper's -sum_i P_i log P_i as each
// token's routing distribution (minimizing it sharpens routing so fewer experts reach p; the
// entropy of the batch-mean distribution would instead fight the balance loss).
// log(s + 1e-30) keeps 0 * log 0 at 0 for scores that underflowed.
class TopPBalancer final : public Balancer {
 public:
  explicit TopPBalancer(const MoeConfig& cfg) : cfg_(cfg) {}
  std::string name() const override { return "top_p"; }

  Routing select(const RouterOutput& in, Philox&) override {
    check_router_output(in, cfg_.num_experts, "balance.top_p");
    const int64_t T = in.scores.size(0), E = cfg_.num_experts;
    Selection ranked = select_topk(in.scores, E, "balance.top_p");  // every expert, by score
    const double p = cfg_.balance.top_p_threshold;
    Selection sel;
    sel.reserve(size_t(T * 2));
    for (int64_t t = 0; t < T; ++t) {
      double cum = 0;
      for (int64_t r = 0; r < E; ++r) {
        size_t a = size_t(t * E + r);
        sel.push(t, ranked.expert[a], ranked.score[a]);
        cum += ranked.score[a];
        if (cum >= p) break;
      }
    }
    return build_routing(in.scores, sel, GateOptions{false, cfg_.gate_scale});
  }

  std::vector<ExtraLoss> extra_losses(const RouterOutput& in, const Routing& r) override {
    std::vector<double> loads = routing_loads(r, cfg_.num_experts);
    double total = std::accumulate(loads.begin(), loads.end(), 0.0);
    Tensor aux = switch_aux(in.scores, loads, total);
    const Tensor& s = in.scores;
    Tensor ent = neg(mean_all(sum(mul(s, log(add_scalar(s, 1e-30))), {1})));
    return {ExtraLoss{"aux", mul_scalar(aux, cfg_.balance.aux_alpha), aux.item_double()},
            ExtraLoss{"entropy", mul_scalar(ent, cfg_.balance.top_p_entropy_beta), ent.item_double()}};
  }

 private:
  MoeConfig cfg_;
};

}  // namespace

std::unique_ptr<Balancer> make_top_p_balancer(const MoeConfig& cfg) { return std::make_unique<TopPBalancer>(cfg); }

}  // namespace moe
