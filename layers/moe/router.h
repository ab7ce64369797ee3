// The MoE router: a linear gate W_r [E_r, D] evaluated in fp32 (f64 in gradient checks),
// scores by softmax or sigmoid, optional multiplicative input jitter, and the router z-loss.
#pragma once
#include <string>
#include <utility>

#include "core/rng.h"
#include "core/tensor.h"
#include "layers/module.h"
#include "layers/moe/balance/balancer.h"

namespace moe {

enum class ScoreFunction { softmax, sigmoid };
// Parses MoeConfig::score_function; throws naming the recipe key "router.score".
ScoreFunction parse_score_function(const std::string& name);

// Fused op: logits = (x * jitter) W^T and scores = softmax | sigmoid(logits), one tape node for
// both outputs. x [T, D], w [E_r, D] of the same floating dtype; jitter [T, D] or undefined (no
// gradient flows into jitter). Returns {logits, scores}, both [T, E_r] and differentiable.
std::pair<Tensor, Tensor> router_logits_scores(const Tensor& x, const Tensor& w, ScoreFunction fn,
                                               const Tensor& jitter = Tensor());

// ST-MoE router z-loss without its coefficient: mean_t (logsumexp_j logits[t, j])^2, 0-dim.
Tensor router_z_loss(const Tensor& logits);

class Router : public Module {
 public:
  // outputs = E_r (the balancer's router_outputs(E)); weight ~ N(0, init_std^2) from init_rng.
  // dtype f64 keeps the router in f64 (gradient checks); any other dtype gives fp32.
  Router(int64_t d_model, int64_t outputs, ScoreFunction fn, double jitter, double init_std, Philox& init_rng,
         DType dtype);

  // x [T, D] (any floating dtype; converted to the router's) -> logits and scores. Jitter
  // multiplies x by U(1 - eps, 1 + eps) per element, only in training, drawn from jitter_rng.
  RouterOutput forward(const Tensor& x, int64_t num_experts, int64_t top_k, int64_t seq_len, Philox& jitter_rng);
  // The same on the cuda device for a device-routed layer (Balancer::routes_on_device()): x [T, D]
  // and an fp32 weight there, logits = x W^T and scores in fp32 device ops with autograd, no
  // jitter (the layer routes on the host when jitter applies).
  RouterOutput forward_on_device(const Tensor& x, int64_t num_experts, int64_t top_k, int64_t seq_len);

  const Tensor& weight() const { return weight_; }
  DType dtype() const { return weight_.dtype(); }
  ScoreFunction score_function() const { return fn_; }
  double jitter() const { return jitter_; }

 private:
  Tensor weight_;
  ScoreFunction fn_;
  double jitter_;
};

}  // namespace moe
