// Module: owns parameters and child modules under hierarchical names
// ("blocks.3.attn.wq.weight"), in registration order so every listing is deterministic.
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace moe {

class Module {
 public:
  virtual ~Module() = default;

  // Every parameter of this module and its children, with full dotted names. Also stamps
  // each tensor's name() with that full name (used in error messages and checkpoints).
  std::vector<std::pair<std::string, Tensor>> named_parameters(const std::string& prefix = "") const;
  std::vector<Tensor> parameters() const;
  int64_t num_parameters() const;
  void zero_grad() const;
  // Moves every parameter to `device` in place: each parameter keeps its identity (every holder
  // of the Tensor sees the new storage), its values and dtype; grads are dropped.
  void to(Device device) const;
  Device device() const;  // of the first parameter (cpu for a module without any)

  void train(bool on = true);
  void eval() { train(false); }
  bool training() const { return training_; }

 protected:
  // Registers t as a parameter (sets requires_grad) and returns it.
  Tensor register_parameter(const std::string& name, Tensor t);
  template <class M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> m) {
    children_.emplace_back(name, m);
    return m;
  }

 private:
  std::vector<std::pair<std::string, Tensor>> params_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  bool training_ = true;
};

}  // namespace moe
