// The autograd tape. Each differentiable op, when grad mode is on and an input requires grad,
// records a node: its outputs and a closure that turns the outputs' grads into input grads.
// backward() walks the tape in reverse recording order, then clears it.
#pragma once
#include <functional>
#include <initializer_list>
#include <vector>

#include "core/tensor.h"

namespace moe {

bool grad_enabled();

// Disables recording for its scope (evaluation, optimizer updates, balancer math).
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool prev_;
};

// True when grad mode is on and any of the inputs requires grad.
bool needs_grad(std::initializer_list<Tensor> inputs);
bool needs_grad(const std::vector<Tensor>& inputs);

// grads[i] is the gradient of outputs[i] (zeros when nothing flowed into that output).
using BackwardFn = std::function<void(const std::vector<Tensor>& grads)>;

// Marks the outputs as requiring grad and appends a node. Call only when needs_grad(...).
void record(const char* op, const std::vector<Tensor>& outputs, BackwardFn backward);

// Adds g into t's grad (out of place, so grads shared between inputs never alias).
// Does nothing when t does not require grad. g must have t's shape.
void accumulate_grad(const Tensor& t, const Tensor& g);

size_t tape_size();
void clear_tape();  // drop recorded nodes without running backward (e.g. after an error)

}  // namespace moe
