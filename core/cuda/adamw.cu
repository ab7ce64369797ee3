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

}  // namespace

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

}  // namespace moe::cuda
