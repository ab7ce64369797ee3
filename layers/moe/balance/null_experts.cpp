// Strategy "null_experts" (AdaMoE, arXiv 2406.13233): n_null extra router outputs for experts that
// output zero; top-k over all E + n_null, so a token may use fewer than k real experts.
#include <numeric>

#include "core/cpu/elementwise.h"
#include "layers/moe/balance/aux_math.h"
#include "layers/moe/balance/device_selection.h"
#include "layers/moe/balance/strategies.h"
#include "parallel/communicator.h"

namespace moe {
namespace {

// Choices of null experts are removed from the routing (they cost no FLOPs and add nothing);
// the remaining real gates are renormalized to sum 1 per token (cfg.renormalize_gates, k > 1).
// The Switch aux loss (coefficient router.null_aux_alpha) runs over all E + n_null experts with
// the loads of the full top-k, nulls included, which select() keeps for extra_losses().
// Data parallelism, balance.scope = "global" (default): those loads are all-reduced over the
// ranks (the global micro-batch's f_i; P_i stays local and the trainer averages over ranks), as
// aux_loss micro_batch: the single process's loss. scope = "local": the rank's own loads.
// Routes on the device always (routes_on_device()): the top-k runs there and only its [T, k] ids
// and values come down; the loads (and their all-reduce) are host vectors on both paths, the
// real gates are gathered and renormalized on the device (build_routing of a device source).
class NullExpertsBalancer final : public Balancer {
 public:
  explicit NullExpertsBalancer(const MoeConfig& cfg) : cfg_(cfg) {}
  std::string name() const override { return "null_experts"; }
  int64_t router_outputs(int64_t num_experts) const override { return num_experts + cfg_.balance.num_null_experts; }

  Routing select(const RouterOutput& in, Philox&) override {
    const int64_t E = cfg_.num_experts, Er = router_outputs(E);
    check_router_output(in, Er, "balance.null_experts");
    Selection all = on_device(in) ? device_topk_selection(in.scores, {}, cfg_.top_k)
                                  : select_topk(in.scores, cfg_.top_k, "balance.null_experts");
    full_loads_.assign(size_t(Er), 0.0);
    Selection real;
    real.reserve(all.size());
    for (size_t a = 0; a < all.size(); ++a) {
      full_loads_[size_t(all.expert[a])] += 1.0;
      if (all.expert[a] < E) real.push(all.token[a], all.expert[a], all.score[a]);
    }
    loads_tokens_ = in.scores.size(0);
    return build_routing(in.scores, real, token_choice_gates(cfg_));
  }
  bool routes_on_device() const override { return true; }

  std::vector<ExtraLoss> extra_losses(const RouterOutput& in, const Routing&) override {
    MOE_CHECK(loads_tokens_ == in.scores.size(0), "balance.null_experts",
              "extra_losses needs the select() of the same ", in.scores.size(0), " tokens first");
    std::vector<double> loads = full_loads_;
    if (Communicator* comm = batch_communicator(cfg_.balance.scope)) comm->all_reduce_sum(loads);
    double total = std::accumulate(loads.begin(), loads.end(), 0.0);
    Tensor loss = switch_aux(in.scores, loads, total);
    return {extra_loss("aux", loss, cfg_.balance.null_aux_alpha)};
  }

 private:
  MoeConfig cfg_;
  std::vector<double> full_loads_;  // [E + n_null] loads of the last select's full top-k
  int64_t loads_tokens_ = -1;
};

}  // namespace

std::unique_ptr<Balancer> make_null_experts_balancer(const MoeConfig& cfg) {
  return std::make_unique<NullExpertsBalancer>(cfg);
}

}  // namespace moe
