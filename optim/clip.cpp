// Global-norm gradient clipping (see clip.h).
#include "optim/clip.h"

#include <cmath>
#include <set>
#include <vector>

#include "core/autograd.h"
#include "core/device.h"
#include "core/cpu/elementwise.h"
#include "core/dispatch.h"

namespace moe {

double global_grad_norm(const std::vector<Tensor>& params) {
  // Each grad's sum of squares, then their total in the parameters' order. Device grads: one
  // reduction on the device each, all copied down at once (one synchronization per step).
  std::vector<double> sums(params.size(), 0.0);
  std::vector<Tensor> device_grads;
  std::vector<size_t> device_at;
  for (size_t k = 0; k < params.size(); ++k) {
    Tensor g = params[k].grad();
    if (!g.defined()) continue;
    if (g.device() == Device::cuda) {
      device_grads.push_back(g);
      device_at.push_back(k);
      continue;
    }
    Tensor gc = g.contiguous();
    sums[k] = dispatch_float(gc.dtype(), "clip_grad_norm", [&](auto tag) {
      using T = decltype(tag);
      const T* d = gc.data<T>();
      double s = 0;
      for (int64_t i = 0, n = gc.numel(); i < n; ++i) s += double(d[i]) * double(d[i]);
      return s;
    });
  }
  if (!device_grads.empty()) {
    const std::vector<double> device_sums = cuda_backend("clip_grad_norm").sums_of_squares(device_grads);
    for (size_t j = 0; j < device_at.size(); ++j) sums[device_at[j]] = device_sums[j];
  }
  double total = 0;
  for (double s : sums) total += s;
  return std::sqrt(total);
}

double clip_scale(double norm, double max_norm) {
  if (max_norm <= 0 || !std::isfinite(norm) || norm <= max_norm) return 1.0;
  return max_norm / (norm + 1e-6);
}

double clip_grad_norm(const std::vector<Tensor>& params, double max_norm) {
  const double norm = global_grad_norm(params);
  const double scale = clip_scale(norm, max_norm);
  if (scale == 1.0) return norm;
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
