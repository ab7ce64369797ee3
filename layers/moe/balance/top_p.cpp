// Strategy "top_p" (dynamic routing, arXiv 2403.07652): per token, the smallest prefix of experts
// sorted by score whose cumulative score reaches p; plus alpha * L_aux and beta * entropy.
#include <algorithm>
#include <numeric>

#include "core/autograd.h"
#include "core/device.h"
#include "core/cpu/elementwise.h"
#include "core/cpu/reduce.h"
#include "layers/moe/balance/aux_math.h"
#include "layers/moe/balance/device_selection.h"
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
// On the device (routes_on_device(): no batch dependence) the same rule runs there (a thread per
// token, core/cuda/selection.h); the counts, the taken ids [T, K] and their scores come down (K the
// most any token took), gates stay there; aux and entropy are device losses copied down.
class TopPBalancer final : public Balancer {
 public:
  explicit TopPBalancer(const MoeConfig& cfg) : cfg_(cfg) {}
  std::string name() const override { return "top_p"; }

  Routing select(const RouterOutput& in, Philox&) override {
    check_router_output(in, cfg_.num_experts, "balance.top_p");
    if (on_device(in)) return select_on_device(in);
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
    const double alpha = cfg_.balance.aux_alpha, beta = cfg_.balance.top_p_entropy_beta;
    if (on_device(in)) {
      Tensor entropy = cuda_backend("balance.top_p").routing_entropy(in.scores);
      return {extra_loss("aux", aux, alpha), extra_loss("entropy", entropy, beta)};
    }
    const Tensor& s = in.scores;
    Tensor ent = neg(mean_all(sum(mul(s, log(add_scalar(s, 1e-30))), {1})));
    return {ExtraLoss{"aux", mul_scalar(aux, alpha), aux.item_double()},
            ExtraLoss{"entropy", mul_scalar(ent, beta), ent.item_double()}};
  }

  bool routes_on_device() const override { return true; }

 private:
  Routing select_on_device(const RouterOutput& in) {
    CudaBackend& be = cuda_backend("balance.top_p");
    const int64_t T = in.scores.size(0);
    auto [ranked, counts] = be.top_p_select(in.scores, cfg_.balance.top_p_threshold);
    const std::vector<int32_t> n = counts.to_vector<int32_t>();
    const int64_t K = *std::max_element(n.begin(), n.end());  // >= 1: every token takes one
    const Tensor idx = ranked.slice(1, 0, K).contiguous();     // -1 after each token's n_t
    const std::vector<int32_t> ids = idx.to_vector<int32_t>();
    const std::vector<float> v = be.router_gates(in.scores.detach(), idx, false, 1.0).to_vector<float>();
    Selection sel;
    sel.reserve(size_t(T * 2));
    for (int64_t t = 0; t < T; ++t)
      for (int64_t r = 0; r < n[size_t(t)]; ++r) sel.push(t, ids[size_t(t * K + r)], v[size_t(t * K + r)]);
    return build_routing(in.scores, sel, GateOptions{false, cfg_.gate_scale});
  }

  MoeConfig cfg_;
};

}  // namespace

std::unique_ptr<Balancer> make_top_p_balancer(const MoeConfig& cfg) { return std::make_unique<TopPBalancer>(cfg); }

}  // namespace moe
