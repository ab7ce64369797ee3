// Bucketed gradient all-reduce over a communicator and the expert-parallel clipping norm
// (see parallel_grads.h; the layout of the reductions is in docs/parallel.md).
#include "recipes/parallel_grads.h"

#include <algorithm>
#include <cmath>

#include "core/autograd.h"
#include "core/cpu/elementwise.h"
#include "core/dispatch.h"
#include "optim/clip.h"

namespace moe {

namespace {
// Parameters packed per bucket (a larger parameter gets a bucket of its own).
constexpr size_t kGradBucket = size_t(1) << 22;

// These reductions pack grads through host memory (MPI); grads on the cuda device would go
// over NCCL, which is not wired here: refuse them with one line instead of a data() throw.
void require_host(const std::vector<Tensor>& params, const char* op) {
  for (const Tensor& p : params)
    MOE_CHECK(p.device() == Device::cpu, op, "parameter '", p.name(),
              "' is on the cuda device: multi-process training reduces grads on the host only (run one process "
              "with train.device = \"cuda\", or several on the CPU)");
}
}  // namespace

void all_reduce_grads(const std::vector<Tensor>& params, Communicator& comm, double scale) {
  if (params.empty() || (comm.size() == 1 && scale == 1.0)) return;
  require_host(params, "gradient all-reduce");
  const DType dt = params[0].dtype();
  for (auto& p : params) MOE_CHECK(p.dtype() == dt, "gradient all-reduce", "parameters of mixed dtypes");
  std::vector<double> defined(params.size());
  for (size_t i = 0; i < params.size(); ++i) defined[i] = params[i].grad().defined() ? 1.0 : 0.0;
  comm.all_reduce_sum(defined);
  dispatch_float(dt, "gradient all-reduce", [&](auto tag) {
    using T = decltype(tag);
    const T s = T(scale);
    std::vector<T> buf;
    for (size_t i = 0; i < params.size();) {
      size_t j = i, n = 0;
      while (j < params.size() && (j == i || n + size_t(params[j].numel()) <= kGradBucket)) n += size_t(params[j++].numel());
      buf.assign(n, T(0));
      size_t off = 0;
      for (size_t k = i; k < j; ++k) {
        Tensor g = params[k].grad();
        if (g.defined()) {
          Tensor gc = g.contiguous();
          std::copy(gc.data<T>(), gc.data<T>() + gc.numel(), buf.data() + off);
        }
        off += size_t(params[k].numel());
      }
      comm.all_reduce_sum(buf.data(), n);
      for (T& x : buf) x *= s;
      off = 0;
      for (size_t k = i; k < j; ++k) {
        if (defined[k] > 0) {
          Tensor g = Tensor::empty(params[k].shape(), dt);
          std::copy(buf.data() + off, buf.data() + off + size_t(params[k].numel()), g.data<T>());
          Tensor p = params[k];  // a handle: the grad is set on the shared parameter
          p.set_grad(g);
        }
        off += size_t(params[k].numel());
      }
      i = j;
    }
    return 0;
  });
}

double clip_grad_norm_expert_parallel(const std::vector<Tensor>& dense, const std::vector<Tensor>& experts,
                                      Communicator& ep_group, double max_norm) {
  require_host(dense, "expert-parallel clipping");
  require_host(experts, "expert-parallel clipping");
  const double d = global_grad_norm(dense);
  double e = global_grad_norm(experts);
  e *= e;
  ep_group.all_reduce_sum(&e, 1);
  const double norm = std::sqrt(d * d + e);
  if (max_norm <= 0 || !std::isfinite(norm) || norm <= max_norm) return norm;
  const double scale = max_norm / (norm + 1e-6);
  NoGradGuard no_grad;
  auto scale_all = [scale](const std::vector<Tensor>& params) {
    for (Tensor p : params) {
      Tensor g = p.grad();
      if (g.defined()) p.set_grad(mul_scalar(g, scale));
    }
  };
  scale_all(dense);
  scale_all(experts);
  return norm;
}

}  // namespace moe
