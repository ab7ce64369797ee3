// MoeLayer: wires router, strategy, capacity, dispatch, experts and combine for one step,
// and keeps what the trainer needs after it (loads for Balancer::update, routing statistics).
#include "layers/moe/moe_layer.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "core/autograd.h"
#include "core/cpu/activation.h"
#include "core/cpu/elementwise.h"
#include "core/device.h"
#include "layers/moe/balance/device_selection.h"
#include "parallel/communicator.h"

namespace moe {

bool is_moe_layer(const MoeConfig& cfg, int layer) {
  MOE_CHECK(cfg.moe_every >= 1, "moe.moe_every", "must be >= 1, got ", cfg.moe_every);
  return int64_t(layer) % cfg.moe_every == cfg.moe_every - 1;
}

int64_t resolved_expert_hidden(const ModelConfig& cfg) {
  if (cfg.moe.expert_hidden > 0) return cfg.moe.expert_hidden;
  if (cfg.d_ff > 0) return cfg.d_ff;
  int64_t h = (8 * cfg.d_model + 2) / 3;
  return (h + 7) / 8 * 8;
}

void validate_moe_config(const ModelConfig& cfg) {
  const MoeConfig& m = cfg.moe;
  MOE_CHECK(cfg.d_model > 0, "model.d_model", "must be > 0, got ", cfg.d_model);
  MOE_CHECK(cfg.d_ff >= 0, "model.d_ff", "must be >= 0 (0: 8/3 d_model), got ", cfg.d_ff);
  MOE_CHECK(m.num_experts >= 1, "moe.num_experts", "must be >= 1, got ", m.num_experts);
  // As recipes/README.md: k <= E, except expert_choice (experts pick tokens) and null_experts
  // (k counts null experts too: k <= E + n_null).
  const bool null_experts = m.balance.strategy == "null_experts";
  const int64_t max_k = null_experts ? m.num_experts + std::max<int64_t>(m.balance.num_null_experts, 0) : m.num_experts;
  MOE_CHECK(m.top_k >= 1 && (m.balance.strategy == "expert_choice" || m.top_k <= max_k), "router.top_k",
            "must be in [1, ", max_k,
            null_experts ? "] (moe.num_experts + balance.num_null_experts)" : "] (moe.num_experts)", ", got ", m.top_k);
  MOE_CHECK(m.expert_hidden >= 0, "moe.expert_hidden", "must be >= 0 (0: the dense d_ff), got ", m.expert_hidden);
  MOE_CHECK(m.num_shared_experts >= 0, "moe.num_shared_experts", "must be >= 0, got ", m.num_shared_experts);
  MOE_CHECK(m.moe_every >= 1, "moe.moe_every", "must be >= 1, got ", m.moe_every);
  MOE_CHECK(std::isfinite(m.jitter) && m.jitter >= 0 && m.jitter < 1, "router.jitter", "must be in [0, 1), got ",
            m.jitter);
  MOE_CHECK(std::isfinite(m.z_loss_coef) && m.z_loss_coef >= 0, "router.z_loss", "must be >= 0, got ", m.z_loss_coef);
  MOE_CHECK(std::isfinite(m.gate_scale) && m.gate_scale > 0, "router.scale", "must be > 0, got ", m.gate_scale);
  MOE_CHECK(std::isfinite(cfg.init_std) && cfg.init_std >= 0, "model.init_std", "must be >= 0, got ", cfg.init_std);
  validate_capacity_factor(m.capacity_factor);
  parse_drop_policy(m.drop_policy);
  parse_score_function(m.score_function);
}

MoeLayer::MoeLayer(const ModelConfig& cfg, int layer_index, Philox& init_rng, std::unique_ptr<Balancer> balancer,
                   DType dtype, std::shared_ptr<Communicator> ep_group)
    : layer_(layer_index),
      jitter_rng_(init_rng.seed(), stream_id(RngStream::jitter, 0, uint64_t(layer_index))),
      select_rng_(init_rng.seed(), stream_id(RngStream::ssr, 0, uint64_t(layer_index))) {
  validate_moe_config(cfg);
  MOE_CHECK(balancer != nullptr, "MoeLayer", "no balancing strategy given");
  MOE_CHECK(dtype == DType::f32 || dtype == DType::f64, "MoeLayer", "dtype must be f32 or f64, got ",
            dtype_name(dtype));
  const MoeConfig& m = cfg.moe;
  d_model_ = cfg.d_model;
  num_experts_ = m.num_experts;
  top_k_ = m.top_k;
  capacity_factor_ = m.capacity_factor;
  drop_policy_ = parse_drop_policy(m.drop_policy);
  z_loss_coef_ = m.z_loss_coef;
  balancer_ = std::move(balancer);
  const int64_t outputs = balancer_->router_outputs(num_experts_);
  MOE_CHECK(outputs >= num_experts_, "router.balance", "strategy '", balancer_->name(), "' asks for ", outputs,
            " router outputs, fewer than num_experts = ", num_experts_);
  const int64_t H = resolved_expert_hidden(cfg);
  // Output projections (w2) at init_std / sqrt(2 n_layers), GPT-2's scaling, as the dense MLP.
  const double out_std = cfg.init_std / std::sqrt(2.0 * double(std::max<int64_t>(cfg.n_layers, 1)));
  router_ =
      register_module("router", std::make_shared<Router>(d_model_, outputs, parse_score_function(m.score_function),
                                                         m.jitter, cfg.init_std, init_rng, dtype));
  auto all_experts = std::make_shared<Experts>(num_experts_, d_model_, H, cfg.init_std, out_std, init_rng, dtype);
  if (ep_group && ep_group->size() > 1) {
    // Every rank draws all experts (init_rng stays in step with one process) and keeps its slice.
    const int64_t P = ep_group->size();
    MOE_CHECK(num_experts_ % P == 0, "parallel.ep", "value ", P, " does not divide moe.num_experts = ", num_experts_);
    const int64_t El = num_experts_ / P;
    first_expert_ = El * ep_group->rank();
    Philox unused(0, 0, 0);
    auto local = std::make_shared<Experts>(El, d_model_, H, cfg.init_std, out_std, unused, dtype);
    NoGradGuard ng;
    for (auto [dst, src] : {std::pair{local->w1(), all_experts->w1()}, std::pair{local->w3(), all_experts->w3()},
                            std::pair{local->w2(), all_experts->w2()}})
      dst.copy_(src.slice(0, first_expert_, first_expert_ + El));
    all_experts = local;
    ep_group_ = std::move(ep_group);
  }
  experts_ = register_module("experts", all_experts);
  if (m.num_shared_experts > 0)
    shared_ = register_module("shared_experts", std::make_shared<Experts>(1, d_model_, m.num_shared_experts * H,
                                                                          cfg.init_std, out_std, init_rng, dtype));
  pending_loads_.assign(size_t(num_experts_), 0.0);
}

std::vector<double> MoeLayer::take_pending_loads() {
  std::vector<double> out(size_t(num_experts_), 0.0);
  out.swap(pending_loads_);
  return out;
}

double MoeLayer::take_routing_seconds() {
  double s = routing_seconds_;
  routing_seconds_ = 0;
  return s;
}

RoutingStats MoeLayer::take_step_stats() {
  if (step_acc_.load.empty()) {  // no training forward since the last take: all-zero loads
    step_acc_.load.assign(size_t(num_experts_), 0.0);
    step_acc_.logit_sum.assign(size_t(num_experts_), 0.0);
  }
  RoutingStats s = step_acc_.finish(balancer_->state_vector());
  step_acc_ = RoutingAccumulator{};
  return s;
}

void MoeLayer::note_ep_work(const ExpertWork& wk) {
  auto max_over_mean = [](const std::vector<int64_t>& l) {
    int64_t sum = 0, top = 0;
    for (int64_t v : l) sum += v, top = std::max(top, v);
    return sum > 0 ? double(top) * double(l.size()) / double(sum) : 1.0;
  };
  llep_stats_.forwards += 1;
  llep_stats_.rebalanced += wk.rebalanced ? 1 : 0;
  llep_stats_.moved_rows += wk.moved_rows;
  llep_stats_.owner_imbalance += max_over_mean(wk.owner_load);
  llep_stats_.compute_imbalance += max_over_mean(wk.compute_load);
}

// Dispatch, experts, combine; in training each phase is timed forward and backward (markers at
// the phase boundaries: see MoePhaseClock). Under expert parallelism the rows of other ranks'
// experts travel to them and back (ep_dispatch / ep_return), a collective of the EP group.
Tensor MoeLayer::dispatch_experts_combine(const Tensor& x2, const Routing& r, const std::vector<int64_t>& kept) {
  using Clock = MoePhaseClock::Clock;
  const bool timed = training() && grad_enabled();
  std::shared_ptr<MoePhaseClock> clock = clock_;
  auto mark = [&](const Tensor& t, std::function<void()> f) { return timed ? backward_marker(t, std::move(f)) : t; };
  auto since = [](Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); };
  const int64_t A = r.expert.numel();

  Clock::time_point t0 = Clock::now();
  Tensor xin = mark(x2, [clock] { clock->close_backward(MoePhaseClock::dispatch); });
  DispatchPlanPtr plan = make_dispatch_plan(r.token, r.expert, kept, x2.size(0), num_experts_);
  if (training()) routing_seconds_ += since(t0);  // routing_time_s includes the dispatch plan
  Tensor xs = permute_tokens(xin, plan);
  EpExchangePlanPtr ep_plan;
  std::vector<int64_t> offsets = plan->offsets;
  Tensor w1, w3, w2;  // LLEP: the weights of every compute slot, borrowed experts included
  if (ep_group_) {
    ep_plan = make_ep_exchange_plan(plan->offsets, *ep_group_, llep_);
    last_ep_plan_ = ep_plan;
    xs = ep_dispatch(xs, ep_plan, ep_group_);
    offsets = ep_plan->local_offsets;
    if (ep_plan->work.rebalanced) {  // identical on every rank: all take part in the lending
      w1 = ep_slot_weights(experts_->w1(), ep_plan, ep_group_);
      w3 = ep_slot_weights(experts_->w3(), ep_plan, ep_group_);
      w2 = ep_slot_weights(experts_->w2(), ep_plan, ep_group_);
    }
    if (training()) note_ep_work(ep_plan->work);
  }
  xs = mark(xs, [clock] { clock->close_backward(MoePhaseClock::expert); });
  if (timed) clock->add(MoePhaseClock::dispatch, since(t0));

  t0 = Clock::now();
  Tensor ys;
  if (w1.defined()) {  // Experts::forward with the slot weights (on the device xs keeps its dtype)
    Tensor xw = xs.device() == Device::cuda || xs.dtype() == w1.dtype() ? xs : xs.to(w1.dtype());
    ys = expert_swiglu_ffn(xw, w1, w3, w2, offsets);
  } else {
    ys = experts_->forward(xs, offsets);
  }
  ys = mark(ys, [clock] { clock->close_backward(MoePhaseClock::combine); });
  if (timed) clock->add(MoePhaseClock::expert, since(t0));

  t0 = Clock::now();
  if (ep_group_) ys = ep_return(ys, ep_plan, ep_group_);
  // Gates arrive renormalized and scaled by router.scale (the Balancer contract). On the device
  // they stay fp32 (router math), copied there differentiably: their grads return to the host.
  Tensor gate = ys.device() == Device::cuda ? r.gate.to(Device::cuda)
                : r.gate.dtype() == ys.dtype() ? r.gate
                                               : r.gate.to(ys.dtype());
  Tensor out = unpermute_combine(ys, gate.reshape({A}), plan);
  out = mark(out, [clock] { clock->start_backward(); });
  if (timed) clock->add(MoePhaseClock::combine, since(t0));
  return out;
}

Tensor MoeLayer::forward(const Tensor& x) {
  MOE_CHECK(x.dim() == 3 && x.size(2) == d_model_, "MoeLayer.forward", "expected x [B, S, ", d_model_, "], got ",
            x.shape_str());
  const int64_t B = x.size(0), S = x.size(1), T = B * S, E = num_experts_;
  // On the device: router and selection there when the strategy routes on the device (below), else
  // the selection on the host; permute, experts and combine on the device.
  Tensor x2 = x.reshape({T, d_model_});

  using Clock = std::chrono::steady_clock;
  // Device work is queued asynchronously and routing's first copy to the host waits for all of it
  // (this block's attention, earlier layers): drain the queue before the clock starts so
  // routing_time_s counts routing, not the work queued ahead of it. Routing waits at that copy
  // anyway, so the extra wait costs next to nothing.
  if (training() && x.device() == Device::cuda) cuda_backend("MoeLayer.forward").synchronize();
  const Clock::time_point routing_start = Clock::now();
  // With x and an fp32 router on the device and no jitter to draw (the jitter RNG is the host's),
  // the router runs there (Router::forward_on_device). A strategy that can route on the device
  // (Balancer::routes_on_device()) then selects there too: only ids, values and E + 2 statistics'
  // sums come down. Any other selects on the host from the [T, E_r] logits and scores copied down
  // differentiably (their grads go back up): T x E_r values cross, not x [T, D] and the weight,
  // and the router GEMM stays on the device. Everything else routes on the host in fp32.
  const bool router_on_device = device_routing_ && x.device() == Device::cuda && router_->dtype() == DType::f32 &&
                                router_->weight().device() == Device::cuda && !(training() && router_->jitter() > 0);
  const bool on_device = router_on_device && !select_override_ && balancer_->routes_on_device();
  last_router_on_device_ = router_on_device;
  last_on_device_ = on_device;
  RouterOutput ro = router_on_device ? router_->forward_on_device(x2, E, top_k_, S)
                                     : router_->forward(x2, E, top_k_, S, jitter_rng_);
  if (router_on_device && !on_device) {
    ro.logits = ro.logits.to(Device::cpu);
    ro.scores = ro.scores.to(Device::cpu);
  }
  // The statistics' sums (on the device, the NaN check comes with them: before any selection
  // ranks a NaN).
  RouterStatSums stat_sums = router_stat_sums(ro.scores, ro.logits, E);
  if (on_device) {
    const int64_t nan_at = stat_sums.first_nan, C = ro.scores.size(1);
    MOE_CHECK(nan_at < 0, "MoeLayer.device_routing", "router scores contain NaN (token ", nan_at / C, ", expert ",
              nan_at % C, ")");
  }
  Routing r = select_override_ ? select_override_(ro) : balancer_->select(ro, select_rng_);
  const int64_t A = r.expert.numel();
  MOE_CHECK(r.token.numel() == A && r.gate.numel() == A, "MoeLayer.forward", "strategy '", balancer_->name(),
            "' returned token ", r.token.shape_str(), ", expert ", r.expert.shape_str(), ", gate ", r.gate.shape_str(),
            " (expected equal lengths)");

  std::vector<double> load = expert_loads(r.expert, E, "MoeLayer.forward", balancer_->name());
  if (training())
    for (int64_t e = 0; e < E; ++e) pending_loads_[size_t(e)] += load[size_t(e)];

  extra_losses_ = balancer_->extra_losses(ro, r);
  if (z_loss_coef_ > 0) {
    Tensor z = router_z_loss(ro.logits);
    extra_losses_.push_back(extra_loss("z", z, z_loss_coef_));
  }

  CapacityResult cap = apply_capacity(r, T, top_k_, E, capacity_factor_, drop_policy_);
  if (training()) routing_seconds_ += std::chrono::duration<double>(Clock::now() - routing_start).count();
  Tensor out = dispatch_experts_combine(x2, r, cap.kept);  // adds the dispatch plan's time to routing_seconds_
  if (shared_) out = add(out, shared_->forward_all(x2));

  {
    NoGradGuard ng;
    RoutingAccumulator acc;
    acc.add(load, cap.dropped, stat_sums);
    stats_ = acc.finish(balancer_->state_vector());
    if (training()) {
      if (step_acc_.empty())
        step_acc_ = acc;
      else
        step_acc_.add(load, cap.dropped, stat_sums);
    }
    last_routing_ = Routing{r.token.detach(), r.expert.detach(), r.gate.detach(), r.score.defined() ? r.score.detach() : Tensor()};
  }
  return out.reshape({B, S, d_model_});
}

}  // namespace moe
