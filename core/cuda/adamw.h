// Fused AdamW step on device pointers: fp32 master weights and moments, gradients in fp32 or
// bf16, optionally writing the bf16 working copy of the weights in the same pass.
#pragma once
#include <cstddef>

#include "core/cuda/runtime.h"
#include "core/dtype.h"

namespace moe::cuda {

struct AdamwHyper {
  float lr = 1e-3f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, weight_decay = 0.0f;
  long step = 1;  // 1-based, for the bias corrections 1 - beta^step
};

// Decoupled decay (p *= 1 - lr * wd), then p -= lr * m_hat / (sqrt(v_hat) + eps), as torch.optim.AdamW.
// param_bf16 may be null.
template <class G>
void adamw_step(float* param, const G* grad, float* m, float* v, bf16* param_bf16, size_t n, const AdamwHyper& h,
                cudaStream_t stream = nullptr);

// The same update with every coefficient rounded to fp32 on the host exactly as optim/adamw.cpp's
// CPU loop rounds them, and the same order of operations per element:
//   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g g;  p = p decay - step_size m / (sqrt(v) inv_sqrt_bc2 + eps)
// so a parameter on the device follows its CPU twin to the last bit wherever the two compilers
// contract the same products into FMAs (the emulation; nvcc's contraction costs ~1 ulp per step).
struct AdamwCoefficients {
  float beta1 = 0.9f, beta2 = 0.999f, one_minus_beta1 = 0.1f, one_minus_beta2 = 0.001f;
  float step_size = 0;     // lr / (1 - beta1^t)
  float inv_sqrt_bc2 = 1;  // 1 / sqrt(1 - beta2^t)
  float eps = 1e-8f;
  float decay = 1;       // 1 - lr * weight_decay (1 outside the decay group)
  float grad_scale = 1;  // g = grad * grad_scale (global-norm clipping's factor; 1: g = grad exactly)
  // From double hyperparameters, as optim/adamw.cpp computes them (t >= 1).
  static AdamwCoefficients from(double lr, double beta1, double beta2, double eps, double weight_decay, long step);
};
template <class G>
void adamw_step(float* param, const G* grad, float* m, float* v, size_t n, const AdamwCoefficients& c,
                cudaStream_t stream = nullptr);

}  // namespace moe::cuda
