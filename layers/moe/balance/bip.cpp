// Strategy "bip" (Yuan Sun, arXiv 2502.15451): per-expert prices q from the LP dual of the
// balanced assignment problem; selection is top-k of (s - q), gates the unbiased s.
#include "core/autograd.h"
#include "layers/moe/balance/device_selection.h"
#include "layers/moe/balance/dual_prices.h"
#include "layers/moe/balance/strategies.h"

namespace moe {
namespace {

// Orders (both in training only; eval selects with the stored q and never changes it):
//  paper:  T_bip dual iterations on the current batch warm-started from q, then select with
//          the new q. Non-causal: a token's experts depend on the other tokens of its batch.
//  causal: select with the q left by the previous batches, then run the T_bip iterations on
//          this batch to get the q the next batch uses. A batch never influences its own routing.
// q changes inside select(), not in update(): the dual iterations need the scores, and
// update() only sees loads. Data parallelism, balance.scope = "global" (default): the iterations
// run on the global micro-batch (every rank's tokens, capacity from the global token count, the
// experts' columns split over the ranks), so every rank computes the q of the single process on
// the concatenated batch and the ranks' q never differ. scope = "local": each rank's q follows
// its own batches.
class BipBalancer final : public Balancer {
 public:
  explicit BipBalancer(const MoeConfig& cfg) : cfg_(cfg), q_(size_t(cfg.num_experts), 0.0f) {}
  std::string name() const override { return "bip"; }

  Routing select(const RouterOutput& in, Philox&) override {
    check_router_output(in, cfg_.num_experts, "balance.bip");
    const bool paper = cfg_.balance.bip_order == "paper";
    if (on_device(in)) {  // the same orders; the iterations and the selection on the device
      if (in.training && paper) iterate_on_device(in.scores);
      Routing r = device_price_routing(in.scores, q_, cfg_);
      if (in.training && !paper) iterate_on_device(in.scores);
      return r;
    }
    if (in.training && paper) iterate(in.scores);
    Selection sel = select_topk(shifted_scores(in.scores, q_, -1.0), cfg_.top_k, "balance.bip");
    if (in.training && !paper) iterate(in.scores);
    return build_routing(in.scores, sel, token_choice_gates(cfg_));
  }

  // On the device when the batch is this process's own: under a data-parallel batch
  // communicator the iterations run on the global batch (host path, all-gathers).
  bool routes_on_device() const override { return batch_communicator(cfg_.balance.scope) == nullptr; }

  std::vector<double> state_vector() const override { return {q_.begin(), q_.end()}; }
  std::map<std::string, std::vector<double>> state() const override { return {{"q", state_vector()}}; }
  void load_state(const std::map<std::string, std::vector<double>>& s) override {
    std::vector<double> q = state_entry(s, "q", q_.size(), "bip");
    for (size_t i = 0; i < q.size(); ++i) q_[i] = float(q[i]);
  }

 private:
  void iterate(const Tensor& scores) {
    NoGradGuard ng;
    batch_dual_price_iterations(batch_communicator(cfg_.balance.scope), scores, cfg_.top_k, cfg_.balance.bip_iters,
                                /*clip=*/true, q_, "balance.bip");
  }

  // q goes up (E floats), the iterations run on the device scores, q comes down.
  void iterate_on_device(const Tensor& scores) {
    q_ = device_dual_price_iterations(scores, cfg_.top_k, cfg_.balance.bip_iters, /*clip=*/true, q_, "balance.bip")
             .to_vector<float>();
  }

  MoeConfig cfg_;
  std::vector<float> q_;
};

}  // namespace

std::unique_ptr<Balancer> make_bip_balancer(const MoeConfig& cfg) { return std::make_unique<BipBalancer>(cfg); }

}  // namespace moe
