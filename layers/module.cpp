// Parameter registry and recursive listing of Module.
#include "layers/module.h"

namespace moe {

Tensor Module::register_parameter(const std::string& name, Tensor t) {
  t.set_requires_grad(true);
  t.set_name(name);
  params_.emplace_back(name, t);
  return t;
}

std::vector<std::pair<std::string, Tensor>> Module::named_parameters(const std::string& prefix) const {
  std::vector<std::pair<std::string, Tensor>> out;
  for (const auto& [name, t] : params_) {
    std::string full = prefix.empty() ? name : prefix + "." + name;
    Tensor p = t;
    p.set_name(full);
    out.emplace_back(full, p);
  }
  for (const auto& [name, child] : children_) {
    auto sub = child->named_parameters(prefix.empty() ? name : prefix + "." + name);
    out.insert(out.end(), sub.begin(), sub.end());
  }
  return out;
}

std::vector<Tensor> Module::parameters() const {
  std::vector<Tensor> out;
  for (auto& [name, t] : named_parameters()) out.push_back(t);
  return out;
}

int64_t Module::num_parameters() const {
  int64_t n = 0;
  for (auto& [name, t] : named_parameters()) n += t.numel();
  return n;
}

void Module::zero_grad() const {
  for (auto& [name, t] : named_parameters()) t.zero_grad();
}

void Module::to(Device device) const {
  for (auto& [name, t] : named_parameters()) {
    if (t.device() == device) continue;
    Tensor moved = t.detach().to(device);  // contiguous, offset 0
    TensorImpl* impl = t.impl();
    impl->storage = moved.impl()->storage;
    impl->strides = moved.strides();
    impl->offset = 0;
    impl->grad.reset();
  }
}

Device Module::device() const {
  auto params = named_parameters();
  return params.empty() ? Device::cpu : params.front().second.device();
}

void Module::train(bool on) {
  training_ = on;
  for (auto& [name, child] : children_) child->train(on);
}

}  // namespace moe
