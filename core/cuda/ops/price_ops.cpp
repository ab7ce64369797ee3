// The prices of the BIP and quantile balancers on the device (layers/moe/balance/bip.cpp,
// quantile.cpp): the dual price iterations and the quantile beta step over the kernels of
// core/cuda/dual_prices.h, in place on a device price vector [E] fp32. Selection only: no autograd.
#include "core/cuda/dual_prices.h"
#include "core/cuda/ops/cuda_backend.h"
#include "core/cuda/ops/op_util.h"

namespace moe::cuda {
namespace {

// A price vector: [E] fp32, contiguous, on the cuda device (the kernels write it in place).
void check_prices(const Tensor& p, int64_t E, const char* op, const char* what) {
  MOE_CHECK(p.defined() && p.device() == Device::cuda && p.dtype() == DType::f32 && p.is_contiguous() &&
                p.numel() == E,
            op, what, " must be [", E, "] fp32, contiguous, on the cuda device, got ",
            p.defined() ? std::string(dtype_name(p.dtype())) + " " + p.shape_str() : std::string("(undefined)"));
}

}  // namespace

void Backend::dual_price_iterations(const Tensor& scores, const Tensor& q, int64_t k, int64_t cap, int iters,
                                    bool clip) {
  const char* op = "dual_price_iterations";
  check_f32_2d(scores, op, "scores");
  const int64_t T = scores.size(0), E = scores.size(1);
  check_prices(q, E, op, "q");
  MOE_CHECK(k >= 1 && cap >= 1 && iters >= 0, op, "k = ", k, ", cap = ", cap, ", iters = ", iters,
            ": expected k >= 1, cap >= 1, iters >= 0");
  if (iters == 0 || T == 0) return;  // the host's loops run no pass then either
  Tensor sc = scores.detach().contiguous();
  cuda::dual_price_iterations(cf(sc), long(T), int(E), int(k), long(cap), iters, clip, mf(q));
}

void Backend::quantile_beta_update(const Tensor& beta, const Tensor& target, double rate) {
  const char* op = "quantile_beta_update";
  MOE_CHECK(beta.defined(), op, "beta is undefined");
  const int64_t E = beta.numel();
  check_prices(beta, E, op, "beta");
  check_prices(target, E, op, "target");
  if (E == 0) return;
  cuda::quantile_beta_update(mf(beta), cf(target), int(E), rate);
}

}  // namespace moe::cuda
