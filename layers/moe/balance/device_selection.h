// Helpers of the strategies' device branches (Balancer::routes_on_device()): selections and
// losses of a RouterOutput whose logits and scores are fp32 on the cuda device. Decisions come
// down to the host as a Routing's token / expert / score; gates stay on the device.
#pragma once
#include <string>
#include <vector>

#include "core/tensor.h"
#include "layers/extra_loss.h"
#include "layers/moe/balance/balancer.h"
#include "layers/moe/balance/topk_routing.h"

namespace moe {

// True when the router output lives on the cuda device (the strategy's device branch runs).
inline bool on_device(const RouterOutput& in) { return in.scores.defined() && in.scores.device() == Device::cuda; }

// Token-major top-k of `ranked` [T, C] fp32 on the device (+ bias [C], empty or one per column:
// it shifts the ranking only), ties to the lower column, as select_topk on the host. The
// Routing's score is the ranked (shifted) value times score_scale, its gate gate_source [T, C]
// (device, differentiable) at the chosen columns, renormalized over the token's k choices and
// scaled as `opt` says (router_gates). Only the ids and values [T, k] come down.
Routing device_topk_routing(const Tensor& ranked, const std::vector<float>& bias, int64_t k,
                            const Tensor& gate_source, const GateOptions& opt, double score_scale = 1.0);

// The same top-k as a token-major Selection (token 0's k choices in rank order, then token 1's,
// ...; score = the ranked value), for strategies that post-process the choices on the host (null
// experts). idx, when given, receives the device ids [T, k] i32 (for router_gates).
Selection device_topk_selection(const Tensor& ranked, const std::vector<float>& bias, int64_t k,
                                Tensor* idx = nullptr);

// An ExtraLoss from a 0-dim loss on either device: value coef * loss as a host 0-dim tensor
// (differentiable: a device loss is copied down through autograd), unscaled = the loss itself.
ExtraLoss extra_loss(const std::string& name, const Tensor& loss, double coef);

}  // namespace moe
