// AdamW update and its checkpointable state (see adamw.h).
#include "optim/adamw.h"

#include <cmath>
#include <set>

#include "core/autograd.h"
#include "core/device.h"
#include "core/dispatch.h"

namespace moe {

bool default_decay_rule(const std::string&, const Tensor& param) { return param.dim() >= 2; }

AdamW::AdamW(std::vector<std::pair<std::string, Tensor>> named_params, AdamWConfig cfg, DecayRule decay_rule)
    : cfg_(cfg), params_(std::move(named_params)) {
  MOE_CHECK(cfg.beta1 >= 0 && cfg.beta1 < 1, "AdamW", "beta1 must be in [0, 1), got ", cfg.beta1);
  MOE_CHECK(cfg.beta2 >= 0 && cfg.beta2 < 1, "AdamW", "beta2 must be in [0, 1), got ", cfg.beta2);
  MOE_CHECK(cfg.eps > 0, "AdamW", "eps must be positive, got ", cfg.eps);
  MOE_CHECK(cfg.weight_decay >= 0, "AdamW", "weight_decay must be >= 0, got ", cfg.weight_decay);
  std::set<std::string> seen;
  for (auto& [name, p] : params_) {
    MOE_CHECK(seen.insert(name).second, "AdamW", "parameter '", name, "' is listed twice");
    MOE_CHECK(p.dtype() == DType::f32 || p.dtype() == DType::f64, "AdamW", "parameter '", name,
              "' must be f32 or f64, got ", dtype_name(p.dtype()));
    MOE_CHECK(p.is_contiguous(), "AdamW", "parameter '", name, "' ", p.shape_str(), " must be contiguous");
    MOE_CHECK(p.device() == Device::cpu || p.dtype() == DType::f32, "AdamW", "parameter '", name,
              "' on the cuda device must be f32 (the master weights), got ", dtype_name(p.dtype()));
    Slot s;
    // Moments live with their parameter: a parameter on the device is updated there.
    s.m = Tensor::zeros(p.shape(), p.dtype(), p.device());
    s.v = Tensor::zeros(p.shape(), p.dtype(), p.device());
    s.decay = decay_rule(name, p);
    slots_.push_back(std::move(s));
  }
}

bool AdamW::decays(const std::string& name) const {
  for (size_t i = 0; i < params_.size(); ++i)
    if (params_[i].first == name) return slots_[i].decay;
  MOE_FAIL("AdamW", "no parameter named '", name, "'");
}

void AdamW::step(double lr, double grad_scale) {
  MOE_CHECK(std::isfinite(lr) && lr >= 0, "AdamW", "learning rate must be finite and >= 0, got ", lr);
  MOE_CHECK(std::isfinite(grad_scale) && grad_scale > 0, "AdamW", "grad_scale must be finite and > 0, got ",
            grad_scale);
  NoGradGuard no_grad;
  for (size_t i = 0; i < params_.size(); ++i) {
    Tensor& p = params_[i].second;
    Slot& s = slots_[i];
    Tensor g = p.grad();
    if (!g.defined()) continue;
    MOE_CHECK(g.shape() == p.shape(), "AdamW", "grad of '", params_[i].first, "' has shape ", g.shape_str(),
              ", parameter ", p.shape_str());
    MOE_CHECK(g.device() == p.device(), "AdamW", "grad of '", params_[i].first, "' is on the ",
              device_name(g.device()), ", its parameter on the ", device_name(p.device()));
    if (p.device() == Device::cuda) {
      // The fused kernel reads an f32 or bf16 grad as it is; the formula is the loop's below.
      if (g.dtype() != DType::f32 && g.dtype() != DType::bf16) g = g.to(DType::f32);
      ++s.step;
      AdamWUpdate u;
      u.lr = lr;
      u.beta1 = cfg_.beta1;
      u.beta2 = cfg_.beta2;
      u.eps = cfg_.eps;
      u.weight_decay = s.decay ? cfg_.weight_decay : 0.0;
      u.step = s.step;
      u.grad_scale = grad_scale;
      cuda_backend("AdamW").adamw_update(p, g.contiguous(), s.m, s.v, u);
      continue;
    }
    g = g.to(p.dtype()).contiguous();
    ++s.step;
    const double bc1 = 1.0 - std::pow(cfg_.beta1, double(s.step));
    const double bc2_sqrt = std::sqrt(1.0 - std::pow(cfg_.beta2, double(s.step)));
    const double decay = s.decay ? 1.0 - lr * cfg_.weight_decay : 1.0;
    dispatch_float(p.dtype(), "AdamW", [&](auto tag) {
      using T = decltype(tag);
      T* w = p.data<T>();
      T* m = s.m.data<T>();
      T* v = s.v.data<T>();
      const T* gr = g.data<T>();
      const T b1 = T(cfg_.beta1), b2 = T(cfg_.beta2), one_b1 = T(1 - cfg_.beta1), one_b2 = T(1 - cfg_.beta2);
      const T step_size = T(lr / bc1), inv_bc2_sqrt = T(1.0 / bc2_sqrt), eps = T(cfg_.eps), dec = T(decay);
      const T scale = T(grad_scale);  // x * 1 is x: unclipped steps are unchanged
      const int64_t n = p.numel();
#pragma omp parallel for schedule(static) if (n > 32768)
      for (int64_t j = 0; j < n; ++j) {
        const T gj = gr[j] * scale;
        m[j] = b1 * m[j] + one_b1 * gj;
        v[j] = b2 * v[j] + one_b2 * gj * gj;
        w[j] = w[j] * dec - step_size * m[j] / (std::sqrt(v[j]) * inv_bc2_sqrt + eps);
      }
    });
  }
}

void AdamW::zero_grad() {
  for (auto& [name, p] : params_) p.zero_grad();
}

namespace {
// A detached host copy (moments on the device come back to the host).
Tensor host_copy(const Tensor& t) { return t.device() == Device::cpu ? t.clone() : t.to(Device::cpu); }
}  // namespace

std::map<std::string, Tensor> AdamW::exp_avg() const {
  std::map<std::string, Tensor> out;
  for (size_t i = 0; i < params_.size(); ++i) out[params_[i].first] = host_copy(slots_[i].m);
  return out;
}

std::map<std::string, Tensor> AdamW::exp_avg_sq() const {
  std::map<std::string, Tensor> out;
  for (size_t i = 0; i < params_.size(); ++i) out[params_[i].first] = host_copy(slots_[i].v);
  return out;
}

std::map<std::string, Tensor> AdamW::steps() const {
  std::map<std::string, Tensor> out;
  for (size_t i = 0; i < params_.size(); ++i)
    out[params_[i].first] = Tensor::full({}, double(slots_[i].step), DType::i64);
  return out;
}

void AdamW::load_state(const std::map<std::string, Tensor>& exp_avg, const std::map<std::string, Tensor>& exp_avg_sq,
                       const std::map<std::string, Tensor>& steps) {
  // Validate everything first so that a bad state leaves the optimizer untouched.
  auto find = [](const std::map<std::string, Tensor>& map, const std::string& name, const char* what) {
    auto it = map.find(name);
    MOE_CHECK(it != map.end() && it->second.defined(), "AdamW::load_state", what, " of parameter '", name,
              "' is missing");
    return it->second;
  };
  std::vector<Slot> next = slots_;
  for (size_t i = 0; i < params_.size(); ++i) {
    const auto& [name, p] = params_[i];
    Tensor m = find(exp_avg, name, "exp_avg"), v = find(exp_avg_sq, name, "exp_avg_sq"),
           t = find(steps, name, "step");
    MOE_CHECK(m.shape() == p.shape() && v.shape() == p.shape(), "AdamW::load_state", "moments of '", name,
              "' have shapes ", m.shape_str(), " and ", v.shape_str(), ", parameter ", p.shape_str());
    MOE_CHECK(t.numel() == 1, "AdamW::load_state", "step of '", name, "' must have one element, got ",
              t.shape_str());
    const double step = t.item_double();
    MOE_CHECK(step >= 0 && step == std::floor(step), "AdamW::load_state", "step of '", name,
              "' must be a non-negative integer, got ", step);
    if (p.device() == Device::cpu && m.device() == Device::cpu && v.device() == Device::cpu) {
      next[i].m = m.to(p.dtype()).clone();
      next[i].v = v.to(p.dtype()).clone();
    } else {  // into fresh tensors on the parameter's device (copy_ converts dtype and device)
      next[i].m = Tensor::empty(p.shape(), p.dtype(), p.device());
      next[i].v = Tensor::empty(p.shape(), p.dtype(), p.device());
      next[i].m.copy_(m.detach());
      next[i].v.copy_(v.detach());
    }
    next[i].step = int64_t(step);
  }
  slots_ = std::move(next);
}

}  // namespace moe
