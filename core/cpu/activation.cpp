// sigmoid, SiLU and SwiGLU: one flat loop forward and one fused loop backward per op (SwiGLU on the
// vectorized exp of vec_math.h). sigmoid = 1 / (1 + e^-x): e^-x = inf gives 0, never NaN.
#include "core/cpu/activation.h"

#include <algorithm>
#include <cmath>

#include "core/autograd.h"
#include "core/device.h"
#include "core/cpu/vec_math.h"
#include "core/dispatch.h"

namespace moe {
namespace {

constexpr int64_t kParallelElems = 32768;
constexpr int64_t kChunk = 4096;  // elements per parallel task: whole 8-lane vectors, one page of f32

// f(start, count) over [0, n) in chunks, in parallel when n is large; chunks are disjoint.
template <class F>
void for_chunks(int64_t n, F&& f) {
  const int64_t chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (n > kParallelElems)
  for (int64_t c = 0; c < chunks; ++c) f(c * kChunk, std::min(kChunk, n - c * kChunk));
}

template <class T>
inline T sigmoid_of(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

// Contiguous, detached (no tape node for the copy), checked floating input.
Tensor flat_input(const Tensor& x, const char* op) {
  MOE_CHECK(x.defined(), op, "undefined input");
  MOE_CHECK(x.dtype() == DType::f32 || x.dtype() == DType::f64, op, "expected dtype f32 or f64, got ",
            dtype_name(x.dtype()), " for ", x.shape_str());
  return x.detach().contiguous();
}

}  // namespace

Tensor sigmoid(const Tensor& x) {
  Tensor xc = flat_input(x, "sigmoid");
  Tensor out = Tensor::empty(x.shape(), x.dtype());
  dispatch_float(x.dtype(), "sigmoid", [&](auto tag) {
    using T = decltype(tag);
    const T* px = xc.data<T>();
    T* po = out.data<T>();
    int64_t n = out.numel();
#pragma omp parallel for simd if (n > kParallelElems)
    for (int64_t i = 0; i < n; ++i) po[i] = sigmoid_of(px[i]);
  });
  if (needs_grad({x}))
    record("sigmoid", {out}, [x, y = out.detach()](const std::vector<Tensor>& g) {
      Tensor gc = g[0].contiguous();
      Tensor dx = Tensor::empty(x.shape(), x.dtype());
      dispatch_float(x.dtype(), "sigmoid", [&](auto tag) {
        using T = decltype(tag);
        const T *pg = gc.data<T>(), *py = y.data<T>();
        T* pd = dx.data<T>();
        int64_t n = dx.numel();
#pragma omp parallel for simd if (n > kParallelElems)
        for (int64_t i = 0; i < n; ++i) pd[i] = pg[i] * py[i] * (T(1) - py[i]);
      });
      accumulate_grad(x, dx);
    });
  return out;
}

Tensor silu(const Tensor& x) {
  Tensor xc = flat_input(x, "silu");
  Tensor out = Tensor::empty(x.shape(), x.dtype());
  dispatch_float(x.dtype(), "silu", [&](auto tag) {
    using T = decltype(tag);
    const T* px = xc.data<T>();
    T* po = out.data<T>();
    int64_t n = out.numel();
#pragma omp parallel for simd if (n > kParallelElems)
    for (int64_t i = 0; i < n; ++i) po[i] = px[i] * sigmoid_of(px[i]);
  });
  if (needs_grad({x}))
    record("silu", {out}, [x, xc](const std::vector<Tensor>& g) {
      Tensor gc = g[0].contiguous();
      Tensor dx = Tensor::empty(x.shape(), x.dtype());
      dispatch_float(x.dtype(), "silu", [&](auto tag) {
        using T = decltype(tag);
        const T *pg = gc.data<T>(), *px = xc.data<T>();
        T* pd = dx.data<T>();
        int64_t n = dx.numel();
        // d/dx x s(x) = s (1 + x (1 - s))
#pragma omp parallel for simd if (n > kParallelElems)
        for (int64_t i = 0; i < n; ++i) {
          T s = sigmoid_of(px[i]);
          pd[i] = pg[i] * s * (T(1) + px[i] * (T(1) - s));
        }
      });
      accumulate_grad(x, dx);
    });
  return out;
}

Tensor swiglu(const Tensor& gate, const Tensor& up) {
  MOE_CHECK(gate.defined() && up.defined(), "swiglu", "undefined input");
  if (common_device("swiglu", {gate, up}) == Device::cuda) return cuda_backend("swiglu").swiglu(gate, up);
  MOE_CHECK(gate.shape() == up.shape(), "swiglu", "gate ", gate.shape_str(), " and up ", up.shape_str(),
            " must have the same shape");
  MOE_CHECK(gate.dtype() == up.dtype(), "swiglu", "dtype mismatch: gate ", dtype_name(gate.dtype()), " ",
            gate.shape_str(), " vs up ", dtype_name(up.dtype()), " ", up.shape_str());
  Tensor gc = flat_input(gate, "swiglu"), uc = flat_input(up, "swiglu");
  Tensor out = Tensor::empty(gate.shape(), gate.dtype());
  dispatch_float(gate.dtype(), "swiglu", [&](auto tag) {
    using T = decltype(tag);
    const T *pa = gc.data<T>(), *pu = uc.data<T>();
    T* po = out.data<T>();
    for_chunks(out.numel(), [&](int64_t i, int64_t n) { vec::swiglu_forward(pa + i, pu + i, po + i, n); });
  });
  if (needs_grad({gate, up}))
    record("swiglu", {out}, [gate, up, gc, uc](const std::vector<Tensor>& g) {
      Tensor go = g[0].contiguous();
      bool want_gate = gate.requires_grad(), want_up = up.requires_grad();
      Tensor dgate = Tensor::empty(gate.shape(), gate.dtype());
      Tensor dup = Tensor::empty(up.shape(), up.dtype());
      dispatch_float(gate.dtype(), "swiglu", [&](auto tag) {
        using T = decltype(tag);
        const T *pg = go.data<T>(), *pa = gc.data<T>(), *pu = uc.data<T>();
        T *pda = dgate.data<T>(), *pdu = dup.data<T>();
        // One pass: both grads share the sigmoid of the gate.
        for_chunks(go.numel(),
                   [&](int64_t i, int64_t n) { vec::swiglu_backward(pg + i, pa + i, pu + i, pda + i, pdu + i, n); });
      });
      if (want_gate) accumulate_grad(gate, dgate);
      if (want_up) accumulate_grad(up, dup);
    });
  return out;
}

}  // namespace moe
