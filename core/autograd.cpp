// The tape: a thread-local list of nodes in recording order, walked backwards by backward().
#include "core/autograd.h"

#include <algorithm>

#include "core/device.h"

namespace moe {
namespace {

struct Node {
  const char* op;
  std::vector<Tensor> outputs;
  BackwardFn backward;
};

thread_local bool g_grad_enabled = true;
thread_local std::vector<Node> g_tape;

// Out-of-place sum of two same-shape floating tensors.
Tensor add_same_shape(const Tensor& a, const Tensor& b) {
  MOE_CHECK(a.shape() == b.shape(), "accumulate_grad", "grad shape ", b.shape_str(), " does not match ",
            a.shape_str());
  if (a.device() == Device::cuda) return cuda_backend("accumulate_grad").add(a, b.to(a.dtype()));
  Tensor ac = a.contiguous(), bc = b.contiguous().to(a.dtype());
  Tensor out = Tensor::empty(a.shape(), a.dtype());
  int64_t n = a.numel();
  if (a.dtype() == DType::f32) {
    const float *x = ac.data<float>(), *y = bc.data<float>();
    float* o = out.data<float>();
    for (int64_t i = 0; i < n; ++i) o[i] = x[i] + y[i];
  } else if (a.dtype() == DType::f64) {
    const double *x = ac.data<double>(), *y = bc.data<double>();
    double* o = out.data<double>();
    for (int64_t i = 0; i < n; ++i) o[i] = x[i] + y[i];
  } else {
    MOE_FAIL("accumulate_grad", "grads must be f32 or f64, got ", dtype_name(a.dtype()));
  }
  return out;
}

}  // namespace

bool grad_enabled() { return g_grad_enabled; }

NoGradGuard::NoGradGuard() : prev_(g_grad_enabled) { g_grad_enabled = false; }
NoGradGuard::~NoGradGuard() { g_grad_enabled = prev_; }

bool needs_grad(std::initializer_list<Tensor> inputs) {
  if (!g_grad_enabled) return false;
  for (const Tensor& t : inputs)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

bool needs_grad(const std::vector<Tensor>& inputs) {
  if (!g_grad_enabled) return false;
  for (const Tensor& t : inputs)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

void record(const char* op, const std::vector<Tensor>& outputs, BackwardFn backward) {
  for (const Tensor& o : outputs) o.impl()->requires_grad = true;
  g_tape.push_back(Node{op, outputs, std::move(backward)});
}

void accumulate_grad(const Tensor& t, const Tensor& g) {
  if (!t.defined() || !t.requires_grad()) return;
  MOE_CHECK(g.shape() == t.shape(), "accumulate_grad", "grad of shape ", g.shape_str(), " for tensor '", t.name(),
            "' of shape ", t.shape_str());
  MOE_CHECK(g.device() == t.device(), "accumulate_grad", "grad on ", device_name(g.device()), " for tensor '",
            t.name(), "' ", t.shape_str(), " on ", device_name(t.device()));
  NoGradGuard no_grad;
  TensorImpl* impl = t.impl();
  if (!impl->grad) {
    Tensor gc = g.dtype() == t.dtype() ? g.contiguous() : g.to(t.dtype());
    impl->grad = gc.impl_ptr();
  } else {
    impl->grad = add_same_shape(Tensor(impl->grad), g).impl_ptr();
  }
}

size_t tape_size() { return g_tape.size(); }
void clear_tape() { g_tape.clear(); }

void Tensor::backward() const {
  MOE_CHECK(numel() == 1, "backward", "called on a tensor of shape ", shape_str(),
            "; pass a seed gradient for non-scalar outputs");
  backward(Tensor::full(shape(), 1.0, dtype(), device()));
}

void Tensor::backward(const Tensor& seed) const {
  MOE_CHECK(requires_grad(), "backward", "tensor does not require grad (was it computed under NoGradGuard?)");
  accumulate_grad(*this, seed);
  // Take the tape so that ops run inside backward closures do not extend it.
  std::vector<Node> tape;
  tape.swap(g_tape);
  NoGradGuard no_grad;
  for (auto it = tape.rbegin(); it != tape.rend(); ++it) {
      bool any = false;
      for (const Tensor& o : it->outputs) any = any || o.impl()->grad != nullptr;
      if (!any) continue;
      std::vector<Tensor> grads;
      grads.reserve(it->outputs.size());
      for (const Tensor& o : it->outputs)
        grads.push_back(o.impl()->grad ? Tensor(o.impl()->grad) : Tensor::zeros(o.shape(), o.dtype(), o.device()));
      it->backward(grads);
      // An intermediate's grad is consumed now; free it unless the tensor is named (kept for
      // inspection, like PyTorch's retain_grad).
      for (const Tensor& o : it->outputs)
        if (o.name().empty()) o.impl()->grad.reset();
      it->outputs.clear();
      it->backward = nullptr;
  }
}

}  // namespace moe
