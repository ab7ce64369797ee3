// The MoE feed-forward layer: router -> balancer -> capacity -> dispatch -> grouped SwiGLU
// experts -> gate-weighted combine (+ shared experts), with the per-step loads and statistics.
#pragma once
#include <functional>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "core/rng.h"
#include "layers/feed_forward.h"
#include "layers/model_config.h"
#include "layers/moe/balance/balancer.h"
#include "layers/moe/capacity.h"
#include "layers/moe/dispatch.h"
#include "layers/moe/expert_parallel.h"
#include "layers/moe/experts.h"
#include "layers/moe/router.h"
#include "layers/moe/routing_stats.h"

namespace moe {

class Communicator;

// MoE in layers l with (l % moe_every) == moe_every - 1; throws naming "moe.moe_every" if < 1.
bool is_moe_layer(const MoeConfig& cfg, int layer);

// The resolved hidden size of one routed expert: expert_hidden, else the dense FFN's d_ff,
// else 8/3 d_model rounded up to a multiple of 8 (ModelConfig's documented default).
int64_t resolved_expert_hidden(const ModelConfig& cfg);

// Checks every MoE setting this layer reads; throws moe::Error naming the recipe key
// (recipes/README.md: moe.*, router.*).
void validate_moe_config(const ModelConfig& cfg);

class MoeLayer : public FeedForward {
 public:
  // Builds the strategy with make_balancer(cfg.moe). Parameters (in this order of draws from
  // init_rng): router.weight [E_r, D], experts.w1/w3 [E, H, D], experts.w2 [E, D, H], and with
  // shared experts shared_experts.w1/w3 [1, S H, D], shared_experts.w2 [1, D, S H].
  // dtype f32 (router fp32) or f64 (everything f64, for gradient checks).
  // ep_group (expert parallelism, docs/parallel.md): with P > 1 ranks, this rank holds only the
  // experts [rank E/P, (rank + 1) E/P): experts.w1/w3 [E/P, H, D], experts.w2 [E/P, D, H], the
  // slices of the single-process initialization (the draws of init_rng are the same). Router,
  // strategy and shared experts stay replicated; every forward and backward is then a
  // collective over the group (each rank routes its own tokens).
  MoeLayer(const ModelConfig& cfg, int layer_index, Philox& init_rng, DType dtype = DType::f32,
           std::shared_ptr<Communicator> ep_group = nullptr);
  // The same with a given strategy (tests, tools that construct strategies themselves).
  MoeLayer(const ModelConfig& cfg, int layer_index, Philox& init_rng, std::unique_ptr<Balancer> balancer,
           DType dtype = DType::f32, std::shared_ptr<Communicator> ep_group = nullptr);

  Tensor forward(const Tensor& x) override;  // [B, S, D] -> [B, S, D]
  std::vector<ExtraLoss> extra_losses() const override { return extra_losses_; }

  // This step's per-expert loads as selected (before capacity), summed over the training
  // forwards since the last take; returns them and resets to zero. Eval forwards do not count.
  std::vector<double> take_pending_loads();
  Balancer& balancer() { return *balancer_; }
  // Statistics of the last forward (training or eval).
  const RoutingStats& last_stats() const { return stats_; }
  // The assignments of the last forward as selected (before capacity): per-genre loads in eval.
  const Routing& last_routing() const { return last_routing_; }
  // Statistics of all training forwards since the last take (one optimizer step's micro-
  // batches), then reset. The raw sums (routing_accumulator) can be all-reduced over
  // data-parallel ranks first: RoutingAccumulator::unpack(allreduce(pack())).finish(state).
  RoutingStats take_step_stats();
  // Wall seconds this layer spent routing in the training forwards since the last take (router
  // scores, the strategy's select and losses, load count, capacity, dispatch plan), then reset.
  // The trainer adds the balancer update and logs it as routing_time_s (docs/results.md).
  double take_routing_seconds();
  const RoutingAccumulator& routing_accumulator() const { return step_acc_; }

  // RNG streams of this layer (seed of init_rng; streams jitter and ssr keyed by the layer):
  // the trainer checkpoints their offsets.
  Philox& jitter_rng() { return jitter_rng_; }
  Philox& select_rng() { return select_rng_; }

  // Test hook: when set, replaces balancer->select (the balancer's losses still apply). Lets a
  // gradient check hold the routing fixed under finite-difference perturbations.
  using SelectOverride = std::function<Routing(const RouterOutput&)>;
  void set_select_override(SelectOverride f) { select_override_ = std::move(f); }

  // Device routing: with x on the cuda device, an fp32 router on the device and no jitter in
  // training, the router runs on the device (Router::forward_on_device); when the strategy also
  // says Balancer::routes_on_device() and no select override is set, selection and router losses
  // run there too, else they run on the host from the router's outputs copied down.
  // On by default; off forces the whole routing, router included, onto the host (tests compare).
  void set_device_routing(bool on) { device_routing_ = on; }
  // Whether the last forward selected on the device (and ran its router there).
  bool last_routed_on_device() const { return last_on_device_; }
  // Whether the last forward ran its router on the device (selection on either side).
  bool last_router_on_device() const { return last_router_on_device_; }

  int layer_index() const { return layer_; }
  int64_t num_experts() const { return num_experts_; }
  int64_t top_k() const { return top_k_; }
  const Router& router() const { return *router_; }
  // This rank's routed experts: all E, or under expert parallelism the E/P of first_expert().
  const Experts& experts() const { return *experts_; }
  bool expert_parallel() const { return ep_group_ != nullptr; }
  int64_t first_expert() const { return first_expert_; }
  // Seconds of the dispatch / expert / combine phases of the training forwards and backwards
  // since the last take (eval forwards are not timed), then reset.
  MoePhaseTimes take_phase_times() { return clock_->take(); }
  // LLEP (expert parallelism only; docs/parallel.md): rows of overloaded ranks' experts are
  // computed by the least loaded ranks of the EP group. Same results, other ranks do the work.
  void set_llep(const LlepConfig& c) { llep_ = c; }
  // The EP work balance of the training forwards since the last take (identical on every rank
  // of the group), then reset: forwards, LLEP's moves (forwards that moved work, rows computed
  // away from their expert's owner) and the sums over forwards of max / mean rank load, by
  // owner (the router's skew) and as computed (after LLEP).
  struct LlepStats {
    int64_t forwards = 0, rebalanced = 0, moved_rows = 0;
    double owner_imbalance = 0, compute_imbalance = 0;
    LlepStats& operator+=(const LlepStats& o) {
      forwards += o.forwards;
      rebalanced += o.rebalanced;
      moved_rows += o.moved_rows;
      owner_imbalance += o.owner_imbalance;
      compute_imbalance += o.compute_imbalance;
      return *this;
    }
  };
  LlepStats take_llep_stats() { return std::exchange(llep_stats_, LlepStats{}); }
  // The work plan of the last expert-parallel forward (null before the first).
  const EpExchangePlanPtr& last_ep_plan() const { return last_ep_plan_; }
  const Experts* shared_experts() const { return shared_.get(); }

 private:
  Tensor dispatch_experts_combine(const Tensor& x2, const Routing& r, const std::vector<int64_t>& kept);
  void note_ep_work(const ExpertWork& work);  // into llep_stats_

  int layer_;
  int64_t d_model_, num_experts_, top_k_;
  std::optional<double> capacity_factor_;
  DropPolicy drop_policy_;
  double z_loss_coef_;
  std::unique_ptr<Balancer> balancer_;
  std::shared_ptr<Router> router_;
  std::shared_ptr<Experts> experts_, shared_;
  std::shared_ptr<Communicator> ep_group_;  // null without expert parallelism
  int64_t first_expert_ = 0;
  std::shared_ptr<MoePhaseClock> clock_ = std::make_shared<MoePhaseClock>();
  LlepConfig llep_;
  LlepStats llep_stats_;
  EpExchangePlanPtr last_ep_plan_;
  Philox jitter_rng_, select_rng_;
  SelectOverride select_override_;
  std::vector<ExtraLoss> extra_losses_;
  std::vector<double> pending_loads_;
  RoutingStats stats_;
  Routing last_routing_;
  RoutingAccumulator step_acc_;
  double routing_seconds_ = 0;
  bool device_routing_ = true, last_on_device_ = false, last_router_on_device_ = false;
};

}  // namespace moe
