// Global-norm gradient clipping (see clip.h).
#include "optim/clip.h"

#include <cmath>
#include <set>

#include "core/autograd.h"
#include "core/device.h"
#include "core/cpu/elementwise.h"
#include "core/dispatch.h"

namespace moe {

double global_grad_norm(const std::vector<Tensor>& params) {
  double total = 0;
  for (const Tensor& p : params) {
    Tensor g = p.grad();
    if (!g.defined()) continue;
    if (g.device() == Device::cuda) {  // one reduction on the device per grad, summed here in order
      total += cuda_backend("clip_grad_norm").sum_of_squares(g);
      continue;
    }
    Tensor gc = g.contiguous();
    total += dispatch_float(gc.dtype(), "clip_grad_norm", [&](auto tag) {
      using T = decltype(tag);
      const T* d = gc.data<T>();
      double s = 0;
      for (int64_t i = 0, n = gc.numel(); i < n; ++i) s += double(d[i]) * double(d[i]);
      return s;
    });
  }
  return std::sqrt(total);
}

double clip_grad_norm(const std::vector<Tensor>& params, double max_norm) {
  const double norm = global_grad_norm(params);
  if (max_norm <= 0 || !std::isfinite(norm) || norm <= max_norm) return norm;
  const double scale = max_norm / (norm + 1e-6);
  NoGradGuard no_grad;
  // Host grads are replaced rather than scaled in place: two parameters may share one grad
  // buffer. Device grads are scaled in place (no allocation in the step loop), each buffer once.
  std::set<const void*> scaled;
  for (Tensor p : params) {
    Tensor g = p.grad();
    if (!g.defined()) continue;
    if (g.device() == Device::cuda) {
      if (!g.is_contiguous()) {
        p.set_grad(g = g.contiguous());
      } else if (!scaled.insert(g.raw_device_data()).second) {
        continue;
      }
      cuda_backend("clip_grad_norm").scale_(g, scale);
      continue;
    }
    p.set_grad(mul_scalar(g, scale));
  }
  return norm;
}

}  // namespace moe
