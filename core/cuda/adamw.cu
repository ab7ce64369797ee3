// The fused AdamW kernel: one read of param / grad / m / v and one write of each per element;
// the bias corrections are computed once on the host in double precision.
#include <cmath>

#include "core/cuda/adamw.h"
#include "core/cuda/launch.h"

namespace moe::cuda {
namespace {

template <class G>
__global__ void adamw_kernel(float* param, const G* grad, float* m, float* v, dbf16* param_bf16, size_t n, float lr,
                             float beta1, float beta2, float eps, float decay, float inv_bc1, float inv_sqrt_bc2) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    const float g = to_float(grad[i]);
    const float mi = beta1 * m[i] + (1.0f - beta1) * g;
    const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    float p = param[i] * decay;
    p -= lr * (mi * inv_bc1) / (sqrtf(vi) * inv_sqrt_bc2 + eps);
    param[i] = p;
    if (param_bf16) param_bf16[i] = from_float<dbf16>(p);
  }
}

template <class G>
__global__ void adamw_coefficients_kernel(float* param, const G* grad, float* m, float* v, size_t n, float b1,
                                          float b2, float one_b1, float one_b2, float step_size, float inv_sqrt_bc2,
                                          float eps, float decay, float grad_scale) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    const float g = to_float(grad[i]) * grad_scale;  // the clip factor (x * 1 is x)
    const float mi = b1 * m[i] + one_b1 * g;
    const float vi = b2 * v[i] + one_b2 * g * g;
    m[i] = mi;
    v[i] = vi;
    param[i] = param[i] * decay - step_size * mi / (sqrtf(vi) * inv_sqrt_bc2 + eps);
  }
}

}  // namespace

AdamwCoefficients AdamwCoefficients::from(double lr, double beta1, double beta2, double eps, double weight_decay,
                                          long step) {
  MOE_CHECK(step >= 1, "cuda::AdamwCoefficients", "step must be >= 1, got ", step);
  MOE_CHECK(beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1, "cuda::AdamwCoefficients", "betas (", beta1, ", ",
            beta2, ") must lie in [0, 1)");
  const double bc1 = 1.0 - std::pow(beta1, double(step));
  const double bc2_sqrt = std::sqrt(1.0 - std::pow(beta2, double(step)));
  AdamwCoefficients c;
  c.beta1 = float(beta1);
  c.beta2 = float(beta2);
  c.one_minus_beta1 = float(1 - beta1);
  c.one_minus_beta2 = float(1 - beta2);
  c.step_size = float(lr / bc1);
  c.inv_sqrt_bc2 = float(1.0 / bc2_sqrt);
  c.eps = float(eps);
  c.decay = float(1.0 - lr * weight_decay);
  return c;
}

template <class G>
void adamw_step(float* param, const G* grad, float* m, float* v, size_t n, const AdamwCoefficients& c,
                cudaStream_t stream) {
  if (!n) return;
  unsigned blocks = ceil_div(n, 256);
  if (blocks > 4096) blocks = 4096;
  MOE_LAUNCH(adamw_coefficients_kernel<device_t<G>>, blocks, 256, 0, stream, param, dev(grad), m, v, n, c.beta1,
             c.beta2, c.one_minus_beta1, c.one_minus_beta2, c.step_size, c.inv_sqrt_bc2, c.eps, c.decay, c.grad_scale);
}

template <class G>
void adamw_step(float* param, const G* grad, float* m, float* v, bf16* param_bf16, size_t n, const AdamwHyper& h,
                cudaStream_t stream) {
  MOE_CHECK(h.step >= 1, "cuda::adamw_step", "step must be >= 1, got ", h.step);
  MOE_CHECK(h.beta1 >= 0 && h.beta1 < 1 && h.beta2 >= 0 && h.beta2 < 1, "cuda::adamw_step", "betas (", h.beta1, ", ",
            h.beta2, ") must lie in [0, 1)");
  if (!n) return;
  const double bc1 = 1.0 - std::pow(double(h.beta1), double(h.step));
  const double bc2 = 1.0 - std::pow(double(h.beta2), double(h.step));
  unsigned blocks = ceil_div(n, 256);
  if (blocks > 4096) blocks = 4096;
  MOE_LAUNCH(adamw_kernel<device_t<G>>, blocks, 256, 0, stream, param, dev(grad), m, v, dev(param_bf16), n, h.lr,
             h.beta1, h.beta2, h.eps, float(1.0 - double(h.lr) * h.weight_decay), float(1.0 / bc1),
             float(1.0 / std::sqrt(bc2)));
}

template void adamw_step<float>(float*, const float*, float*, float*, bf16*, size_t, const AdamwHyper&, cudaStream_t);
template void adamw_step<bf16>(float*, const bf16*, float*, float*, bf16*, size_t, const AdamwHyper&, cudaStream_t);
template void adamw_step<float>(float*, const float*, float*, float*, size_t, const AdamwCoefficients&, cudaStream_t);
template void adamw_step<bf16>(float*, const bf16*, float*, float*, size_t, const AdamwCoefficients&, cudaStream_t);

}  // namespace moe::cuda
