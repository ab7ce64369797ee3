// Strategy "quantile" (after Megatron's quantile balancing): prices beta from equality-form
// dual quantiles, select-then-update, beta re-centred to mean 0.
#include "core/autograd.h"
#include "core/device.h"
#include "layers/moe/balance/device_selection.h"
#include "layers/moe/balance/dual_prices.h"
#include "layers/moe/balance/strategies.h"

namespace moe {
namespace {

// Our exact update (the Megatron details were not available to us), in training only, after
// the batch was routed with the current beta (causal):
//   p_i     = (k+1)-th largest over j of (s_ij - beta_j)            no clipping
//   beta*_j = (C+1)-th largest over i of (s_ij - p_i),  C = ceil(kT/E)   no clipping
//            (the price at which exactly C tokens would still pick expert j: equality form)
//   beta   <- beta + r * (beta* - beta);  beta <- beta - mean(beta)    r = router.quantile_rate
// r = 1 jumps to this batch's equilibrium prices; small r averages them over batches.
// Re-centring leaves top-k of (s - beta) unchanged and keeps beta from drifting.
// Data parallelism, balance.scope = "global" (default): beta* comes from the global micro-batch
// (every rank's tokens, C from the global token count; see batch_dual_price_iterations), so
// every rank keeps the single process's beta; scope = "local": each rank's beta follows its own
// batches. On the device (routes_on_device(): the batch is the process's own) the same steps with
// an fp32 iteration (CudaBackend::dual_price_iterations): beta within rounding of the host's.
class QuantileBalancer final : public Balancer {
 public:
  explicit QuantileBalancer(const MoeConfig& cfg) : cfg_(cfg), beta_(size_t(cfg.num_experts), 0.0f) {}
  std::string name() const override { return "quantile"; }

  Routing select(const RouterOutput& in, Philox&) override {
    check_router_output(in, cfg_.num_experts, "balance.quantile");
    const int64_t k = cfg_.top_k, E = cfg_.num_experts;
    if (on_device(in)) return select_on_device(in);
    Selection sel = select_topk(shifted_scores(in.scores, beta_, -1.0), k, "balance.quantile");
    if (in.training) {
      NoGradGuard ng;
      std::vector<float> target = beta_;
      batch_dual_price_iterations(batch_communicator(cfg_.balance.scope), in.scores, k, 1, /*clip=*/false, target,
                                  "balance.quantile");
      const double r = cfg_.balance.quantile_rate;
      std::vector<double> next(static_cast<size_t>(E));
      double mean = 0;
      for (int64_t j = 0; j < E; ++j) {
        next[size_t(j)] = double(beta_[size_t(j)]) + r * (double(target[size_t(j)]) - double(beta_[size_t(j)]));
        mean += next[size_t(j)];
      }
      mean /= double(E);
      for (int64_t j = 0; j < E; ++j) beta_[size_t(j)] = float(next[size_t(j)] - mean);
    }
    return build_routing(in.scores, sel, token_choice_gates(cfg_));
  }

  // On the device when the batch is this process's own: under a data-parallel batch
  // communicator beta* comes from the global batch (host path, all-gathers).
  bool routes_on_device() const override { return batch_communicator(cfg_.balance.scope) == nullptr; }

  std::vector<double> state_vector() const override { return {beta_.begin(), beta_.end()}; }
  std::map<std::string, std::vector<double>> state() const override { return {{"beta", state_vector()}}; }
  void load_state(const std::map<std::string, std::vector<double>>& s) override {
    std::vector<double> b = state_entry(s, "beta", beta_.size(), "quantile");
    for (size_t i = 0; i < b.size(); ++i) beta_[i] = float(b[i]);
  }

 private:
  // The host's steps on the device: select with the current beta, then (training) one fp32
  // iteration from beta gives beta*, and the step and re-centring (in double, as above) run there
  // too; beta goes up and comes down (E floats each).
  Routing select_on_device(const RouterOutput& in) {
    Routing r = device_price_routing(in.scores, beta_, cfg_);
    if (in.training) {
      const char* where = "balance.quantile";
      Tensor target = device_dual_price_iterations(in.scores, cfg_.top_k, 1, /*clip=*/false, beta_, where);
      Tensor beta = Tensor::from_vector<float>(beta_, {cfg_.num_experts}).to(Device::cuda);
      cuda_backend(where).quantile_beta_update(beta, target, cfg_.balance.quantile_rate);
      beta_ = beta.to_vector<float>();
    }
    return r;
  }

  MoeConfig cfg_;
  std::vector<float> beta_;
};

}  // namespace

std::unique_ptr<Balancer> make_quantile_balancer(const MoeConfig& cfg) {
  return std::make_unique<QuantileBalancer>(cfg);
}

}  // namespace moe
