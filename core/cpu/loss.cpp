// Fused cross-entropy: per-row logsumexp and target term in one pass (f32 exp: vec_math.h), the mean
// summed in row order; the backward writes (softmax - onehot) / count in one pass per row.
#include "core/cpu/loss.h"

#include <cmath>
#include <limits>
#include <vector>

#include "core/autograd.h"
#include "core/device.h"
#include "core/cpu/vec_math.h"
#include "core/dispatch.h"

namespace moe {
namespace {

constexpr int64_t kParallelElems = 32768;

// Targets as int64, validated up front so the first bad row is the one reported.
std::vector<int64_t> read_targets(const Tensor& targets, const Tensor& logits, int64_t ignore_index) {
  int64_t n = logits.shape()[0], v = logits.shape()[1];
  Tensor tc = targets.contiguous();
  std::vector<int64_t> t(static_cast<size_t>(n));
  dispatch_index(targets.dtype(), "cross_entropy", [&](auto tag) {
    using I = decltype(tag);
    const I* p = tc.data<I>();
    for (int64_t r = 0; r < n; ++r) t[size_t(r)] = int64_t(p[r]);
  });
  for (int64_t r = 0; r < n; ++r) {
    int64_t y = t[size_t(r)];
    MOE_CHECK(y == ignore_index || (y >= 0 && y < v), "cross_entropy", "target ", y, " at row ", r,
              " is outside [0, ", v, ") for logits ", logits.shape_str(), " (ignore_index is ", ignore_index, ")");
  }
  return t;
}

}  // namespace

Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index) {
  MOE_CHECK(logits.defined() && targets.defined(), "cross_entropy", "undefined input");
  if (common_device("cross_entropy", {logits, targets}) == Device::cuda)
    return cuda_backend("cross_entropy").cross_entropy(logits, targets, ignore_index);
  MOE_CHECK(logits.dim() == 2 && targets.dim() == 1 && targets.shape()[0] == logits.shape()[0], "cross_entropy",
            "expected logits [N, V] and targets [N], got logits ", logits.shape_str(), " and targets ",
            targets.shape_str());
  int64_t n = logits.shape()[0], v = logits.shape()[1];
  std::vector<int64_t> tgt = read_targets(targets, logits, ignore_index);
  MOE_CHECK(v > 0 || n == 0, "cross_entropy", "logits ", logits.shape_str(), " have no classes");
  Tensor xc = logits.detach().contiguous();
  Tensor out = Tensor::empty({}, logits.dtype());
  // Per-row logsumexp, kept for the backward (unused for ignored rows).
  auto lse = std::make_shared<std::vector<double>>(size_t(n), 0.0);
  int64_t count = 0;
  for (int64_t r = 0; r < n; ++r) count += tgt[size_t(r)] != ignore_index;
  dispatch_float(logits.dtype(), "cross_entropy", [&](auto tag) {
    using T = decltype(tag);
    const T* x = xc.data<T>();
    std::vector<double> row_loss(size_t(n), 0.0);
#pragma omp parallel for schedule(static) if (n * v > kParallelElems)
    for (int64_t r = 0; r < n; ++r) {
      int64_t y = tgt[size_t(r)];
      if (y == ignore_index) continue;
      const T* xr = x + r * v;
      T m = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : m)
      for (int64_t k = 0; k < v; ++k) m = xr[k] > m ? xr[k] : m;
      T s = vec::sum_exp_shift(xr, v, m);
      double l = double(m) + std::log(double(s));
      (*lse)[size_t(r)] = l;
      row_loss[size_t(r)] = l - double(xr[y]);
    }
    double total = 0;
    for (int64_t r = 0; r < n; ++r) total += row_loss[size_t(r)];
    *out.data<T>() = count ? T(total / double(count)) : T(0);
  });
  if (needs_grad({logits}))
    record("cross_entropy", {out},
           [logits, xc, tgt = std::move(tgt), lse, count, ignore_index, n, v](const std::vector<Tensor>& g) {
             Tensor dx = Tensor::empty(logits.shape(), logits.dtype());
             dispatch_float(logits.dtype(), "cross_entropy", [&](auto tag) {
               using T = decltype(tag);
               const T* x = xc.data<T>();
               T* d = dx.data<T>();
               T scale = count ? T(g[0].item_double() / double(count)) : T(0);
#pragma omp parallel for schedule(static) if (n * v > kParallelElems)
               for (int64_t r = 0; r < n; ++r) {
                 T* dr = d + r * v;
                 int64_t y = tgt[size_t(r)];
                 if (y == ignore_index) {
                   std::fill(dr, dr + v, T(0));
                   continue;
                 }
                 const T* xr = x + r * v;
                 T l = T((*lse)[size_t(r)]);
                 vec::exp_shift_scale(xr, dr, v, l, scale);
                 dr[y] -= scale;
               }
             });
             accumulate_grad(logits, dx);
           });
  return out;
}

}  // namespace moe
