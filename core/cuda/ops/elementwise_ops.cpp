// Element-wise ops of the CUDA backend: add (also what accumulate_grad sums grads with),
// mul_scalar and SwiGLU, on fp32 or bf16 tensors of equal shapes.
#include "core/autograd.h"
#include "core/cpu/elementwise.h"
#include "core/cuda/elementwise.h"
#include "core/cuda/ops/cuda_backend.h"

namespace moe::cuda {
namespace {

// Calls f(T{}) for the storage type of a device activation (fp32 or bf16).
template <class F>
decltype(auto) with_activation_type(DType dt, const char* op, F&& f) {
  switch (dt) {
    case DType::f32: return f(float{});
    case DType::bf16: return f(bf16{});
    default: MOE_FAIL(op, "on the cuda device expects f32 or bf16, got ", dtype_name(dt));
  }
}

void check_pair(const char* op, const Tensor& a, const Tensor& b) {
  common_device(op, {a, b});
  MOE_CHECK(a.shape() == b.shape(), op, "on the cuda device needs equal shapes (no broadcasting), got ",
            a.shape_str(), " and ", b.shape_str());
  MOE_CHECK(a.dtype() == b.dtype(), op, "dtype mismatch: ", dtype_name(a.dtype()), " ", a.shape_str(), " vs ",
            dtype_name(b.dtype()), " ", b.shape_str());
}

}  // namespace

Tensor Backend::add(const Tensor& a, const Tensor& b) {
  // The residual adds: an fp32 stream plus a bf16 sublayer output sums in fp32 (the bf16 side is
  // converted, differentiably).
  if (a.dtype() == DType::f32 && b.dtype() == DType::bf16) return add(a, b.to(DType::f32));
  if (a.dtype() == DType::bf16 && b.dtype() == DType::f32) return add(a.to(DType::f32), b);
  check_pair("add", a, b);
  Tensor ac = a.detach().contiguous(), bc = b.detach().contiguous();
  Tensor out = Tensor::empty(a.shape(), a.dtype(), Device::cuda);
  with_activation_type(a.dtype(), "add", [&](auto tag) {
    using T = decltype(tag);
    cuda::add<T>(ac.device_data<T>(), bc.device_data<T>(), out.device_data<T>(), size_t(out.numel()));
  });
  if (needs_grad({a, b}))
    record("add", {out}, [a, b](const std::vector<Tensor>& g) {
      accumulate_grad(a, g[0]);
      accumulate_grad(b, g[0]);
    });
  return out;
}

Tensor Backend::mul_scalar(const Tensor& a, double s) {
  Tensor ac = a.detach().contiguous();
  Tensor out = Tensor::empty(a.shape(), a.dtype(), Device::cuda);
  with_activation_type(a.dtype(), "mul_scalar", [&](auto tag) {
    using T = decltype(tag);
    cuda::scale<T>(ac.device_data<T>(), float(s), out.device_data<T>(), size_t(out.numel()));
  });
  if (needs_grad({a}))
    record("mul_scalar", {out}, [a, s](const std::vector<Tensor>& g) { accumulate_grad(a, moe::mul_scalar(g[0], s)); });
  return out;
}

Tensor Backend::swiglu(const Tensor& gate, const Tensor& up) {
  check_pair("swiglu", gate, up);
  Tensor gc = gate.detach().contiguous(), uc = up.detach().contiguous();
  Tensor out = Tensor::empty(gate.shape(), gate.dtype(), Device::cuda);
  const size_t n = size_t(out.numel());
  with_activation_type(gate.dtype(), "swiglu", [&](auto tag) {
    using T = decltype(tag);
    swiglu_forward<T>(gc.device_data<T>(), uc.device_data<T>(), out.device_data<T>(), n);
  });
  if (needs_grad({gate, up}))
    record("swiglu", {out}, [gate, up, gc, uc, n](const std::vector<Tensor>& g) {
      Tensor dc = g[0].contiguous();
      Tensor dg = Tensor::empty(gate.shape(), gate.dtype(), Device::cuda);
      Tensor du = Tensor::empty(up.shape(), up.dtype(), Device::cuda);
      with_activation_type(gate.dtype(), "swiglu", [&](auto tag) {
        using T = decltype(tag);
        swiglu_backward<T>(gc.device_data<T>(), uc.device_data<T>(), dc.device_data<T>(), dg.device_data<T>(),
                           du.device_data<T>(), n);
      });
      accumulate_grad(gate, dg);
      accumulate_grad(up, du);
    });
  return out;
}

}  // namespace moe::cuda
