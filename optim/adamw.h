// AdamW (Loshchilov & Hutter): Adam moments with bias correction and weight decay decoupled
// from the gradient, the same update as torch.optim.AdamW. State is kept per parameter name.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace moe {

struct AdamWConfig {
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
};

// Which parameters get weight decay. The default rule decays tensors with 2 or more dims
// (matrices, embedding tables, expert weights) and never 1-d ones (norm gains, biases, router
// biases): decaying a gain towards 0 shrinks the layer's output scale instead of regularizing.
using DecayRule = std::function<bool(const std::string& name, const Tensor& param)>;
bool default_decay_rule(const std::string& name, const Tensor& param);

class AdamW {
 public:
  AdamW(std::vector<std::pair<std::string, Tensor>> named_params, AdamWConfig cfg = {},
        DecayRule decay_rule = default_decay_rule);

  // One update at learning rate lr, for every parameter that has a grad (parameters without
  // one are left untouched, moments and step included, like PyTorch). Per parameter, with
  // t its own step count:
  //   p -= lr * wd * p   (decay groups only)
  //   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
  //   p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
  // with g the grad times grad_scale (global-norm clipping's factor, optim/clip.h clip_scale: the
  // same product, g * T(grad_scale), as clip_grad_norm's replacement of the grad, without a pass
  // of its own). Parameters on the cuda device (f32, moments there too) are updated by the
  // backend's fused kernel with the same fp32 coefficients and order of operations.
  void step(double lr, double grad_scale = 1.0);
  // Drops every parameter's grad.
  void zero_grad();

  const AdamWConfig& config() const { return cfg_; }
  bool decays(const std::string& name) const;  // is this parameter in the decay group?
  const std::vector<std::pair<std::string, Tensor>>& params() const { return params_; }

  // ---- state, by parameter name (for checkpoints) ----
  // Moments are copies on the host, same dtype and shape as the parameter (a parameter on the
  // cuda device keeps its moments there; they are copied back); a parameter never updated yet
  // has zero moments and step 0. steps() holds one 0-dim i64 tensor per parameter.
  std::map<std::string, Tensor> exp_avg() const;
  std::map<std::string, Tensor> exp_avg_sq() const;
  std::map<std::string, Tensor> steps() const;
  // Restores the state; every parameter must be present in each map with its shape (the
  // error names the parameter and both shapes). Values are copied, from either device, onto the
  // parameter's device.
  void load_state(const std::map<std::string, Tensor>& exp_avg, const std::map<std::string, Tensor>& exp_avg_sq,
                  const std::map<std::string, Tensor>& steps);

 private:
  struct Slot {
    Tensor m, v;
    int64_t step = 0;
    bool decay = false;
  };
  AdamWConfig cfg_;
  std::vector<std::pair<std::string, Tensor>> params_;
  std::vector<Slot> slots_;  // parallel to params_
};

}  // namespace moe
