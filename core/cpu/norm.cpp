// RMSNorm over the last dim: a fused forward that keeps each row's inverse RMS for the backward,
// and a backward whose weight-grad reduction runs in fixed row blocks (same bits on any thread count).
#include "core/cpu/norm.h"

#include <cmath>

#include "core/autograd.h"
#include "core/device.h"
#include "core/dispatch.h"

namespace moe {
namespace {

// Rows per block of the weight-grad partial sums; fixed so the summation order never depends
// on how many threads run.
constexpr int64_t kRowBlock = 64;
constexpr int64_t kParallelElems = 32768;

}  // namespace

Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps) {
  MOE_CHECK(x.defined() && weight.defined(), "rms_norm", "undefined input");
  if (common_device("rms_norm", {x, weight}) == Device::cuda) return cuda_backend("rms_norm").rms_norm(x, weight, eps);
  MOE_CHECK(x.dim() >= 1, "rms_norm", "expected x [..., D], got a 0-dim tensor");
  int64_t d = x.shape().back();
  MOE_CHECK(weight.dim() == 1 && weight.shape()[0] == d, "rms_norm", "weight ", weight.shape_str(),
            " does not match x ", x.shape_str(), " (expected [", d, "])");
  MOE_CHECK(x.dtype() == weight.dtype(), "rms_norm", "dtype mismatch: x ", dtype_name(x.dtype()), " ",
            x.shape_str(), " vs weight ", dtype_name(weight.dtype()), " ", weight.shape_str());
  MOE_CHECK(eps >= 0, "rms_norm", "eps must be >= 0, got ", eps);
  Tensor xc = x.detach().contiguous(), wc = weight.detach().contiguous();
  int64_t rows = d == 0 ? 0 : x.numel() / d;
  Tensor out = Tensor::empty(x.shape(), x.dtype());
  Tensor inv_rms = Tensor::empty({rows}, x.dtype());
  dispatch_float(x.dtype(), "rms_norm", [&](auto tag) {
    using T = decltype(tag);
    const T *px = xc.data<T>(), *pw = wc.data<T>();
    T *po = out.data<T>(), *pr = inv_rms.data<T>();
#pragma omp parallel for schedule(static) if (rows * d > kParallelElems)
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = px + r * d;
      T ss = 0;
#pragma omp simd reduction(+ : ss)
      for (int64_t j = 0; j < d; ++j) ss += xr[j] * xr[j];
      T inv = T(1) / std::sqrt(ss / T(d) + T(eps));
      pr[r] = inv;
      T* orow = po + r * d;
#pragma omp simd
      for (int64_t j = 0; j < d; ++j) orow[j] = xr[j] * inv * pw[j];
    }
  });
  if (needs_grad({x, weight}))
    record("rms_norm", {out}, [x, weight, xc, wc, inv_rms, rows, d](const std::vector<Tensor>& g) {
      Tensor gc = g[0].contiguous();
      bool want_x = x.requires_grad(), want_w = weight.requires_grad();
      Tensor dx = want_x ? Tensor::empty(x.shape(), x.dtype()) : Tensor();
      Tensor dw = want_w ? Tensor::zeros({d}, x.dtype()) : Tensor();
      dispatch_float(x.dtype(), "rms_norm", [&](auto tag) {
        using T = decltype(tag);
        const T *px = xc.data<T>(), *pw = wc.data<T>(), *pg = gc.data<T>(), *pr = inv_rms.data<T>();
        if (want_x) {
          T* pd = dx.data<T>();
          // dx = r (g w) - r^3 / D * x * sum(g w x)
#pragma omp parallel for schedule(static) if (rows * d > kParallelElems)
          for (int64_t r = 0; r < rows; ++r) {
            const T *xr = px + r * d, *gr = pg + r * d;
            T dot = 0;
#pragma omp simd reduction(+ : dot)
            for (int64_t j = 0; j < d; ++j) dot += gr[j] * pw[j] * xr[j];
            T inv = pr[r], coef = inv * inv * inv * dot / T(d);
            T* dr = pd + r * d;
#pragma omp simd
            for (int64_t j = 0; j < d; ++j) dr[j] = inv * gr[j] * pw[j] - coef * xr[j];
          }
        }
        if (want_w) {
          // dw = sum over rows of g * x * r: partials per fixed block, then added in block order.
          int64_t blocks = (rows + kRowBlock - 1) / kRowBlock;
          std::vector<T> part(size_t(blocks * d), T(0));
#pragma omp parallel for schedule(static) if (rows * d > kParallelElems)
          for (int64_t b = 0; b < blocks; ++b) {
            T* acc = part.data() + b * d;
            for (int64_t r = b * kRowBlock; r < std::min(rows, (b + 1) * kRowBlock); ++r) {
              const T *xr = px + r * d, *gr = pg + r * d;
              T inv = pr[r];
#pragma omp simd
              for (int64_t j = 0; j < d; ++j) acc[j] += gr[j] * xr[j] * inv;
            }
          }
          T* pdw = dw.data<T>();
          for (int64_t b = 0; b < blocks; ++b)
            for (int64_t j = 0; j < d; ++j) pdw[j] += part[size_t(b * d + j)];
        }
      });
      if (want_x) accumulate_grad(x, dx);
      if (want_w) accumulate_grad(weight, dw);
    });
  return out;
}

}  // namespace moe
