// Routing on the cuda device for the plain top-k strategies (Balancer::device_topk(): none,
// aux_loss micro_batch / per_sequence, loss_free) and S-BASE (sinkhorn: in training top-k of the
// Sinkhorn plan of the logits, gates sigmoid | softmax of the logits): router GEMM, scores, the
// plan, top-k (+ the loss-free bias), gates, aux loss and z-loss run as device ops with autograd
// (the plan has none: it only selects); the decisions (token and
// expert ids, selection scores) and the statistics' sums (router_stat_sums: E + 2 numbers, not the
// [T, E] scores) come down once. Same decisions and, within fp32 rounding, the same gates and losses as the host
// path (Router::forward + Balancer::select + extra_losses + router_z_loss).
#pragma once
#include <vector>

#include "core/device.h"
#include "layers/extra_loss.h"
#include "layers/moe/balance/balancer.h"
#include "layers/moe/router.h"

namespace moe {

struct DeviceRouting {
  // token, expert (i64) and score (f32, the ranked value: scores + bias for loss_free) on the
  // host; gate [T k] fp32 on the device, differentiable into the router weight and x.
  Routing routing;
  RouterStatSums stat_sums;        // for RoutingAccumulator::add (summed on the device)
  std::vector<ExtraLoss> losses;   // "aux" (when spec.aux != none), then "z" (z_loss_coef > 0): host 0-dim
};

// x2 [T, D] on the device (any floating dtype: converted to fp32), weight [E, D] fp32 on the
// device; seq_len divides T (per_sequence); training selects by the Sinkhorn plan when
// spec.sinkhorn is set (eval: top-k of the scores). Throws naming the op on NaN scores, as
// select_topk.
DeviceRouting route_on_device(const Tensor& x2, const Tensor& weight, ScoreFunction fn, const DeviceTopk& spec,
                              int64_t top_k, int64_t seq_len, double z_loss_coef, bool training);

}  // namespace moe
