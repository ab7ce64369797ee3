// The optimizer's part of the CUDA backend: the fused AdamW update of one parameter (fp32 master,
// fp32 moments, the coefficients rounded as optim/adamw.cpp rounds them), the sum of squares of
// a gradient for global-norm clipping, and in-place scaling.
#include "core/cuda/adamw.h"
#include "core/cuda/caching_allocator.h"
#include "core/cuda/clip.h"
#include "core/cuda/elementwise.h"
#include "core/cuda/memory.h"
#include "core/cuda/ops/cuda_backend.h"

namespace moe::cuda {
namespace {

// A tensor the optimizer kernels read or write as one flat array.
void require_flat(const Tensor& t, const char* op, const char* role) {
  MOE_CHECK(t.defined(), op, role, " is undefined");
  MOE_CHECK(t.device() == Device::cuda, op, role, " '", t.name(), "' ", t.shape_str(), " is not on the cuda device");
  MOE_CHECK(t.is_contiguous(), op, role, " '", t.name(), "' ", t.shape_str(), " must be contiguous");
}

}  // namespace

void Backend::adamw_update(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                           const AdamWUpdate& u) {
  const char* op = "adamw_update";
  require_flat(param, op, "parameter");
  require_flat(grad, op, "grad");
  require_flat(m, op, "exp_avg");
  require_flat(v, op, "exp_avg_sq");
  MOE_CHECK(param.dtype() == DType::f32 && m.dtype() == DType::f32 && v.dtype() == DType::f32, op, "parameter '",
            param.name(), "' and its moments must be f32 (master weights), got ", dtype_name(param.dtype()), ", ",
            dtype_name(m.dtype()), ", ", dtype_name(v.dtype()));
  MOE_CHECK(grad.shape() == param.shape() && m.shape() == param.shape() && v.shape() == param.shape(), op,
            "parameter '", param.name(), "' ", param.shape_str(), ": grad ", grad.shape_str(), ", moments ",
            m.shape_str(), " and ", v.shape_str());
  AdamwCoefficients c = AdamwCoefficients::from(u.lr, u.beta1, u.beta2, u.eps, u.weight_decay, long(u.step));
  c.grad_scale = float(u.grad_scale);
  const size_t n = size_t(param.numel());
  float* p = param.device_data<float>();
  float* mp = m.device_data<float>();
  float* vp = v.device_data<float>();
  switch (grad.dtype()) {
    case DType::f32: adamw_step(p, grad.device_data<float>(), mp, vp, n, c); return;
    case DType::bf16: adamw_step(p, grad.device_data<bf16>(), mp, vp, n, c); return;
    default:
      MOE_FAIL(op, "grad of '", param.name(), "' must be f32 or bf16, got ", dtype_name(grad.dtype()));
  }
}

std::vector<double> Backend::sums_of_squares(const std::vector<Tensor>& xs) {
  const char* op = "sums_of_squares";
  std::vector<double> out(xs.size(), 0.0);
  if (xs.empty()) return out;
  Workspace<float> sums(xs.size());
  device_memset_async(sums.get(), 0, sizeof(float) * xs.size(), nullptr);
  std::vector<Tensor> contiguous;  // alive until the copy down: the kernels read them
  contiguous.reserve(xs.size());
  for (size_t i = 0; i < xs.size(); ++i) {
    const Tensor& x = xs[i];
    MOE_CHECK(x.defined() && x.device() == Device::cuda, op, "tensor ", i, " is not on the cuda device");
    const Tensor& xc = contiguous.emplace_back(x.contiguous());
    const size_t n = size_t(xc.numel());
    switch (xc.dtype()) {
      case DType::f32: accumulate_sum_squares(xc.device_data<float>(), n, sums.get() + i); break;
      case DType::bf16: accumulate_sum_squares(xc.device_data<bf16>(), n, sums.get() + i); break;
      default: MOE_FAIL(op, "tensor '", x.name(), "' must be f32 or bf16, got ", dtype_name(xc.dtype()));
    }
  }
  std::vector<float> host(xs.size());
  copy_to_host(host.data(), sums.get(), sizeof(float) * xs.size());  // synchronizes with the kernels
  for (size_t i = 0; i < xs.size(); ++i) out[i] = double(host[i]);
  return out;
}

void Backend::scale_(const Tensor& x, double s) {
  const char* op = "scale_";
  require_flat(x, op, "tensor");
  const size_t n = size_t(x.numel());
  switch (x.dtype()) {
    case DType::f32: scale(x.device_data<float>(), float(s), x.device_data<float>(), n); return;
    case DType::bf16: scale(x.device_data<bf16>(), float(s), x.device_data<bf16>(), n); return;
    default: MOE_FAIL(op, "tensor '", x.name(), "' must be f32 or bf16, got ", dtype_name(x.dtype()));
  }
}

}  // namespace moe::cuda
