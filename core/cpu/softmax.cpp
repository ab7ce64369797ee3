// softmax, log_softmax and logsumexp along any dim, shifted by the max so no exp overflows.
// The tensor is seen as [outer, n, inner]: inner == 1 (the last dim) runs row by row, otherwise
// whole inner-contiguous lanes are processed together so the loops stay unit-stride.
#include "core/cpu/softmax.h"

#include <cmath>
#include <limits>
#include <vector>

#include "core/autograd.h"
#include "core/dispatch.h"

namespace moe {
namespace {

constexpr int64_t kParallelElems = 32768;

enum class Mode { softmax, log_softmax, logsumexp };

struct Layout {
  int64_t outer = 1, n = 1, inner = 1, dim = 0;
};

Layout layout_of(const Tensor& x, int64_t dim, const char* op) {
  MOE_CHECK(x.defined(), op, "undefined input");
  MOE_CHECK(x.dim() >= 1, op, "expected at least 1 dim, got a 0-dim tensor");
  Layout l;
  l.dim = wrap_dim(dim, x.dim(), op);
  for (int64_t d = 0; d < l.dim; ++d) l.outer *= x.shape()[d];
  l.n = x.shape()[l.dim];
  for (int64_t d = l.dim + 1; d < x.dim(); ++d) l.inner *= x.shape()[d];
  return l;
}

// A -inf max (every entry -inf) shifts by 0 instead, so logsumexp gives -inf rather than NaN.
template <class T>
inline T safe_shift(T m) {
  return std::isinf(m) && m < 0 ? T(0) : m;
}

// Forward for one mode. out is [outer, n, inner] (softmax / log_softmax) or [outer, inner].
template <class T>
void forward_kernel(const T* x, T* out, const Layout& l, Mode mode) {
  int64_t n = l.n, inner = l.inner;
  const T kNegInf = -std::numeric_limits<T>::infinity();
  if (inner == 1) {
#pragma omp parallel for schedule(static) if (l.outer * n > kParallelElems)
    for (int64_t r = 0; r < l.outer; ++r) {
      const T* xr = x + r * n;
      T m = kNegInf;
#pragma omp simd reduction(max : m)
      for (int64_t k = 0; k < n; ++k) m = xr[k] > m ? xr[k] : m;
      m = safe_shift(m);
      T s = 0;
      if (mode == Mode::softmax) {
        T* yr = out + r * n;
        for (int64_t k = 0; k < n; ++k) {
          yr[k] = std::exp(xr[k] - m);
          s += yr[k];
        }
        T inv = T(1) / s;
#pragma omp simd
        for (int64_t k = 0; k < n; ++k) yr[k] *= inv;
      } else {
#pragma omp simd reduction(+ : s)
        for (int64_t k = 0; k < n; ++k) s += std::exp(xr[k] - m);
        T lse = m + std::log(s);
        if (mode == Mode::logsumexp) {
          out[r] = lse;
        } else {
          T* yr = out + r * n;
#pragma omp simd
          for (int64_t k = 0; k < n; ++k) yr[k] = xr[k] - lse;
        }
      }
    }
    return;
  }
#pragma omp parallel if (l.outer * n * inner > kParallelElems)
  {
    std::vector<T> m(static_cast<size_t>(inner)), s(static_cast<size_t>(inner));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < l.outer; ++r) {
      const T* xb = x + r * n * inner;
      std::fill(m.begin(), m.end(), kNegInf);
      for (int64_t k = 0; k < n; ++k)
        for (int64_t i = 0; i < inner; ++i) m[size_t(i)] = std::max(m[size_t(i)], xb[k * inner + i]);
      for (int64_t i = 0; i < inner; ++i) m[size_t(i)] = safe_shift(m[size_t(i)]);
      std::fill(s.begin(), s.end(), T(0));
      for (int64_t k = 0; k < n; ++k)
        for (int64_t i = 0; i < inner; ++i) s[size_t(i)] += std::exp(xb[k * inner + i] - m[size_t(i)]);
      if (mode == Mode::logsumexp) {
        for (int64_t i = 0; i < inner; ++i) out[r * inner + i] = m[size_t(i)] + std::log(s[size_t(i)]);
      } else if (mode == Mode::softmax) {
        T* yb = out + r * n * inner;
        for (int64_t i = 0; i < inner; ++i) s[size_t(i)] = T(1) / s[size_t(i)];
        for (int64_t k = 0; k < n; ++k)
          for (int64_t i = 0; i < inner; ++i)
            yb[k * inner + i] = std::exp(xb[k * inner + i] - m[size_t(i)]) * s[size_t(i)];
      } else {
        T* yb = out + r * n * inner;
        for (int64_t i = 0; i < inner; ++i) m[size_t(i)] += std::log(s[size_t(i)]);
        for (int64_t k = 0; k < n; ++k)
          for (int64_t i = 0; i < inner; ++i) yb[k * inner + i] = xb[k * inner + i] - m[size_t(i)];
      }
    }
  }
}

// dx[k] = a[k] * (g[k] - sum_k g[k] * b[k]) with (a, b) = (y, y) for softmax; log_softmax uses
// dx[k] = g[k] - exp(y[k]) * sum_k g[k], and logsumexp dx[k] = g * exp(x[k] - lse).
template <class T>
void backward_kernel(const T* g, const T* saved, const T* x, T* dx, const Layout& l, Mode mode) {
  int64_t n = l.n, inner = l.inner;
  if (inner == 1 && mode != Mode::logsumexp) {
#pragma omp parallel for schedule(static) if (l.outer * n > kParallelElems)
    for (int64_t r = 0; r < l.outer; ++r) {
      const T *gr = g + r * n, *yr = saved + r * n;
      T* dr = dx + r * n;
      T acc = 0;
      if (mode == Mode::softmax) {
#pragma omp simd reduction(+ : acc)
        for (int64_t k = 0; k < n; ++k) acc += gr[k] * yr[k];
#pragma omp simd
        for (int64_t k = 0; k < n; ++k) dr[k] = yr[k] * (gr[k] - acc);
      } else {
#pragma omp simd reduction(+ : acc)
        for (int64_t k = 0; k < n; ++k) acc += gr[k];
        for (int64_t k = 0; k < n; ++k) dr[k] = gr[k] - std::exp(yr[k]) * acc;
      }
    }
    return;
  }
#pragma omp parallel if (l.outer * n * inner > kParallelElems)
  {
    std::vector<T> acc(static_cast<size_t>(inner));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < l.outer; ++r) {
      int64_t base = r * n * inner;
      if (mode == Mode::logsumexp) {
        const T* gr = g + r * inner;
        const T* lse = saved + r * inner;
        for (int64_t k = 0; k < n; ++k)
          for (int64_t i = 0; i < inner; ++i)
            dx[base + k * inner + i] = gr[i] * std::exp(x[base + k * inner + i] - lse[i]);
        continue;
      }
      std::fill(acc.begin(), acc.end(), T(0));
      const T *gb = g + base, *yb = saved + base;
      T* db = dx + base;
      if (mode == Mode::softmax) {
        for (int64_t k = 0; k < n; ++k)
          for (int64_t i = 0; i < inner; ++i) acc[size_t(i)] += gb[k * inner + i] * yb[k * inner + i];
        for (int64_t k = 0; k < n; ++k)
          for (int64_t i = 0; i < inner; ++i)
            db[k * inner + i] = yb[k * inner + i] * (gb[k * inner + i] - acc[size_t(i)]);
      } else {
        for (int64_t k = 0; k < n; ++k)
          for (int64_t i = 0; i < inner; ++i) acc[size_t(i)] += gb[k * inner + i];
        for (int64_t k = 0; k < n; ++k)
          for (int64_t i = 0; i < inner; ++i)
            db[k * inner + i] = gb[k * inner + i] - std::exp(yb[k * inner + i]) * acc[size_t(i)];
      }
    }
  }
}

Tensor run(const char* op, const Tensor& x, int64_t dim, Mode mode) {
  Layout l = layout_of(x, dim, op);
  Tensor xc = x.detach().contiguous();
  Shape out_shape = x.shape();
  if (mode == Mode::logsumexp) out_shape.erase(out_shape.begin() + l.dim);
  Tensor out = Tensor::empty(out_shape, x.dtype());
  dispatch_float(x.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    forward_kernel<T>(xc.data<T>(), out.data<T>(), l, mode);
  });
  if (needs_grad({x})) {
    Tensor saved = out.detach();
    record(op, {out}, [x, xc, saved, l, mode, op](const std::vector<Tensor>& g) {
      Tensor gc = g[0].contiguous();
      Tensor dx = Tensor::empty(x.shape(), x.dtype());
      dispatch_float(x.dtype(), op, [&](auto tag) {
        using T = decltype(tag);
        backward_kernel<T>(gc.data<T>(), saved.data<T>(), xc.data<T>(), dx.data<T>(), l, mode);
      });
      accumulate_grad(x, dx);
    });
  }
  return out;
}

}  // namespace

Tensor softmax(const Tensor& x, int64_t dim) { return run("softmax", x, dim, Mode::softmax); }
Tensor log_softmax(const Tensor& x, int64_t dim) { return run("log_softmax", x, dim, Mode::log_softmax); }
Tensor logsumexp(const Tensor& x, int64_t dim) { return run("logsumexp", x, dim, Mode::logsumexp); }

}  // namespace moe
