// Strategy "none": plain top-k of the scores, no loss, no state. The baseline every other
// strategy is compared against (and what a collapsed router does unchecked).
#include "layers/moe/balance/device_selection.h"
#include "layers/moe/balance/strategies.h"

namespace moe {
namespace {

class NoneBalancer final : public Balancer {
 public:
  explicit NoneBalancer(const MoeConfig& cfg) : cfg_(cfg) {}
  std::string name() const override { return "none"; }
  Routing select(const RouterOutput& in, Philox&) override {
    check_router_output(in, cfg_.num_experts, "balance.none");
    if (on_device(in)) return device_topk_routing(in.scores, {}, cfg_.top_k, in.scores, token_choice_gates(cfg_));
    return build_routing(in.scores, select_topk(in.scores, cfg_.top_k, "balance.none"), token_choice_gates(cfg_));
  }
  bool routes_on_device() const override { return true; }

 private:
  MoeConfig cfg_;
};

}  // namespace

std::unique_ptr<Balancer> make_none_balancer(const MoeConfig& cfg) { return std::make_unique<NoneBalancer>(cfg); }

}  // namespace moe
