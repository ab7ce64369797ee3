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

}  // namespace moe::cuda
