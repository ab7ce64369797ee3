// Bucketed gradient all-reduce over a communicator and the expert-parallel clipping norm
// (see parallel_grads.h; the layout of the reductions is in docs/parallel.md).
#include "recipes/parallel_grads.h"

#include <algorithm>
#include <cmath>

#include "core/autograd.h"
#include "core/cpu/elementwise.h"
#include "core/device.h"
#include "core/dispatch.h"
#include "optim/clip.h"

namespace moe {

namespace {
// Parameters packed per bucket (a larger parameter gets a bucket of its own).
constexpr size_t kGradBucket = size_t(1) << 22;

// The bucket [i, j) of params: parameters packed up to kGradBucket elements (a larger one alone).
size_t bucket_end(const std::vector<Tensor>& params, size_t i, size_t& n) {
  size_t j = i;
  n = 0;
  while (j < params.size() && (j == i || n + size_t(params[j].numel()) <= kGradBucket)) n += size_t(params[j++].numel());
  return j;
}

// Grads on the cuda device (fp32 masters): each bucket is packed into one device buffer, summed in
// place by a communicator that takes device buffers (NCCL) or through one host copy each way
// (MPI), scaled on the device and unpacked into fresh grads.
void all_reduce_device_grads(const std::vector<Tensor>& params, const std::vector<double>& defined,
                             Communicator& comm, double scale) {
  NoGradGuard ng;
  for (size_t i = 0; i < params.size();) {
    size_t n = 0;
    const size_t j = bucket_end(params, i, n);
    Tensor buf = Tensor::zeros({int64_t(n)}, DType::f32, Device::cuda);
    int64_t off = 0;
    for (size_t k = i; k < j; ++k) {
      const int64_t m = params[k].numel();
      MOE_CHECK(params[k].device() == Device::cuda && params[k].dtype() == DType::f32, "gradient all-reduce",
                "parameter '", params[k].name(), "': expected fp32 on the cuda device like the others");
      Tensor g = params[k].grad();
      if (g.defined()) buf.slice(0, off, off + m).copy_(g.reshape({m}));
      off += m;
    }
    if (comm.takes_device_buffers()) {
      cuda_backend("gradient all-reduce").synchronize();  // the packing kernels are done
      comm.all_reduce_sum(buf.device_data<float>(), n);
    } else {
      Tensor host = buf.to(Device::cpu);
      comm.all_reduce_sum(host.data<float>(), n);
      buf = host.to(Device::cuda);
    }
    if (scale != 1.0) buf = mul_scalar(buf, scale);
    off = 0;
    for (size_t k = i; k < j; ++k) {
      const int64_t m = params[k].numel();
      if (defined[k] > 0) {
        Tensor p = params[k];  // a handle: the grad is set on the shared parameter
        p.set_grad(buf.slice(0, off, off + m).reshape(params[k].shape()).clone());
      }
      off += m;
    }
    i = j;
  }
}
}  // namespace

void all_reduce_grads(const std::vector<Tensor>& params, Communicator& comm, double scale) {
  if (params.empty() || (comm.size() == 1 && scale == 1.0)) return;
  const DType dt = params[0].dtype();
  for (auto& p : params) MOE_CHECK(p.dtype() == dt, "gradient all-reduce", "parameters of mixed dtypes");
  std::vector<double> defined(params.size());
  for (size_t i = 0; i < params.size(); ++i) defined[i] = params[i].grad().defined() ? 1.0 : 0.0;
  comm.all_reduce_sum(defined);
  if (params[0].device() == Device::cuda) return all_reduce_device_grads(params, defined, comm, scale);
  dispatch_float(dt, "gradient all-reduce", [&](auto tag) {
    using T = decltype(tag);
    const T s = T(scale);
    std::vector<T> buf;
    for (size_t i = 0; i < params.size();) {
      size_t n = 0;
      const size_t j = bucket_end(params, i, n);
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

double expert_parallel_grad_norm(const std::vector<Tensor>& dense, const std::vector<Tensor>& experts,
                                 Communicator& ep_group) {
  // Grads on the cuda device give their sums of squares from the device (global_grad_norm):
  // only one double per rank is exchanged.
  const double d = global_grad_norm(dense);
  double e = global_grad_norm(experts);
  e *= e;
  ep_group.all_reduce_sum(&e, 1);
  return std::sqrt(d * d + e);
}

double clip_grad_norm_expert_parallel(const std::vector<Tensor>& dense, const std::vector<Tensor>& experts,
                                      Communicator& ep_group, double max_norm) {
  const double norm = expert_parallel_grad_norm(dense, experts, ep_group);
  const double scale = clip_scale(norm, max_norm);
  if (scale == 1.0) return norm;
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
