// Broadcasting binary ops and unary maps. Same-shape contiguous inputs take a flat loop the
// compiler vectorizes; other cases index through broadcast strides.
#include "core/cpu/elementwise.h"

#include <cmath>

#include "core/autograd.h"
#include "core/device.h"
#include "core/cpu/reduce.h"
#include "core/dispatch.h"

namespace moe {

Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op) {
  size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    MOE_CHECK(da == db || da == 1 || db == 1, op, "shapes ", shape_str(a), " and ", shape_str(b),
              " cannot be broadcast");
    out[i] = da == 1 ? db : da;
  }
  return out;
}

namespace {

// Strides of `t` seen through the broadcast shape `out` (0 along broadcast dims).
Shape broadcast_strides(const Tensor& t, const Shape& out) {
  Shape st(out.size(), 0);
  size_t off = out.size() - size_t(t.dim());
  for (size_t i = 0; i < size_t(t.dim()); ++i) st[off + i] = t.shape()[i] == 1 ? 0 : t.strides()[i];
  return st;
}

template <class T, class F>
Tensor binary_kernel(const Tensor& a, const Tensor& b, const Shape& out_shape, F f) {
  Tensor out = Tensor::empty(out_shape, a.dtype());
  T* o = out.data<T>();
  int64_t n = out.numel();
  if (a.shape() == b.shape() && a.is_contiguous() && b.is_contiguous()) {
    const T *x = a.data<T>(), *y = b.data<T>();
#pragma omp parallel for simd if (n > 32768)
    for (int64_t i = 0; i < n; ++i) o[i] = f(x[i], y[i]);
    return out;
  }
  if (b.numel() == 1) {  // tensor op scalar-tensor: common in losses
    Tensor ac = a.contiguous();
    if (ac.shape() == out_shape) {
      const T* x = ac.data<T>();
      T y = *b.data<T>();
#pragma omp parallel for simd if (n > 32768)
      for (int64_t i = 0; i < n; ++i) o[i] = f(x[i], y);
      return out;
    }
  }
  Shape sa = broadcast_strides(a, out_shape), sb = broadcast_strides(b, out_shape);
  const T *x = a.data<T>(), *y = b.data<T>();
  int64_t nd = int64_t(out_shape.size());
  if (n == 0) return out;
  // Innermost dim as a flat loop, outer dims by an index counter.
  int64_t inner = nd ? out_shape[nd - 1] : 1;
  int64_t ia = nd ? sa[nd - 1] : 0, ib = nd ? sb[nd - 1] : 0;
  std::vector<int64_t> idx(size_t(std::max<int64_t>(nd - 1, 0)), 0);
  int64_t offa = 0, offb = 0;
  for (int64_t row = 0; row < n / std::max<int64_t>(inner, 1); ++row) {
    T* orow = o + row * inner;
    for (int64_t j = 0; j < inner; ++j) orow[j] = f(x[offa + j * ia], y[offb + j * ib]);
    for (int64_t k = nd - 2; k >= 0; --k) {
      if (++idx[k] < out_shape[k]) {
        offa += sa[k];
        offb += sb[k];
        break;
      }
      offa -= sa[k] * (out_shape[k] - 1);
      offb -= sb[k] * (out_shape[k] - 1);
      idx[k] = 0;
    }
  }
  return out;
}

template <class F>
Tensor binary(const char* op, const Tensor& a, const Tensor& b, F f) {
  MOE_CHECK(a.dtype() == b.dtype(), op, "dtype mismatch: ", dtype_name(a.dtype()), " ", a.shape_str(), " vs ",
            dtype_name(b.dtype()), " ", b.shape_str());
  Shape out_shape = broadcast_shapes(a.shape(), b.shape(), op);
  return dispatch_float(a.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    return binary_kernel<T>(a, b, out_shape, [&](T x, T y) { return f(x, y); });
  });
}

template <class F>
Tensor unary(const char* op, const Tensor& a, F f) {
  Tensor ac = a.contiguous();
  Tensor out = Tensor::empty(a.shape(), a.dtype());
  dispatch_float(a.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    const T* x = ac.data<T>();
    T* o = out.data<T>();
    int64_t n = out.numel();
#pragma omp parallel for simd if (n > 32768)
    for (int64_t i = 0; i < n; ++i) o[i] = f(x[i]);
  });
  return out;
}

}  // namespace

Tensor add(const Tensor& a, const Tensor& b) {
  if (common_device("add", {a, b}) == Device::cuda) return cuda_backend("add").add(a, b);
  Tensor out = binary("add", a, b, [](auto x, auto y) { return x + y; });
  if (needs_grad({a, b}))
    record("add", {out}, [a, b](const std::vector<Tensor>& g) {
      accumulate_grad(a, sum_to(g[0], a.shape()));
      accumulate_grad(b, sum_to(g[0], b.shape()));
    });
  return out;
}

Tensor sub(const Tensor& a, const Tensor& b) {
  Tensor out = binary("sub", a, b, [](auto x, auto y) { return x - y; });
  if (needs_grad({a, b}))
    record("sub", {out}, [a, b](const std::vector<Tensor>& g) {
      accumulate_grad(a, sum_to(g[0], a.shape()));
      if (b.requires_grad()) accumulate_grad(b, sum_to(neg(g[0]), b.shape()));
    });
  return out;
}

Tensor mul(const Tensor& a, const Tensor& b) {
  Tensor out = binary("mul", a, b, [](auto x, auto y) { return x * y; });
  if (needs_grad({a, b}))
    record("mul", {out}, [a, b](const std::vector<Tensor>& g) {
      if (a.requires_grad()) accumulate_grad(a, sum_to(mul(g[0], b), a.shape()));
      if (b.requires_grad()) accumulate_grad(b, sum_to(mul(g[0], a), b.shape()));
    });
  return out;
}

Tensor div(const Tensor& a, const Tensor& b) {
  Tensor out = binary("div", a, b, [](auto x, auto y) { return x / y; });
  if (needs_grad({a, b}))
    record("div", {out}, [a, b, out](const std::vector<Tensor>& g) {
      if (a.requires_grad()) accumulate_grad(a, sum_to(div(g[0], b), a.shape()));
      if (b.requires_grad()) accumulate_grad(b, sum_to(neg(div(mul(g[0], out), b)), b.shape()));
    });
  return out;
}

Tensor add_scalar(const Tensor& a, double s) {
  Tensor out = unary("add_scalar", a, [s](auto x) { return x + decltype(x)(s); });
  if (needs_grad({a})) record("add_scalar", {out}, [a](const std::vector<Tensor>& g) { accumulate_grad(a, g[0]); });
  return out;
}

Tensor mul_scalar(const Tensor& a, double s) {
  if (a.device() == Device::cuda) return cuda_backend("mul_scalar").mul_scalar(a, s);
  Tensor out = unary("mul_scalar", a, [s](auto x) { return x * decltype(x)(s); });
  if (needs_grad({a}))
    record("mul_scalar", {out}, [a, s](const std::vector<Tensor>& g) { accumulate_grad(a, mul_scalar(g[0], s)); });
  return out;
}

Tensor neg(const Tensor& a) { return mul_scalar(a, -1.0); }

Tensor exp(const Tensor& a) {
  Tensor out = unary("exp", a, [](auto x) { return std::exp(x); });
  if (needs_grad({a}))
    record("exp", {out}, [a, out](const std::vector<Tensor>& g) { accumulate_grad(a, mul(g[0], out.detach())); });
  return out;
}

Tensor log(const Tensor& a) {
  Tensor out = unary("log", a, [](auto x) { return std::log(x); });
  if (needs_grad({a}))
    record("log", {out}, [a](const std::vector<Tensor>& g) { accumulate_grad(a, div(g[0], a.detach())); });
  return out;
}

Tensor sqrt(const Tensor& a) {
  Tensor out = unary("sqrt", a, [](auto x) { return std::sqrt(x); });
  if (needs_grad({a}))
    record("sqrt", {out}, [a, out](const std::vector<Tensor>& g) {
      accumulate_grad(a, div(mul_scalar(g[0], 0.5), out.detach()));
    });
  return out;
}

Tensor square(const Tensor& a) {
  Tensor out = unary("square", a, [](auto x) { return x * x; });
  if (needs_grad({a}))
    record("square", {out}, [a](const std::vector<Tensor>& g) {
      accumulate_grad(a, mul(g[0], mul_scalar(a.detach(), 2.0)));
    });
  return out;
}

}  // namespace moe
