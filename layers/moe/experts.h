// The routed experts: E SwiGLU FFNs stored as stacked weights w1, w3 [E, H, D] and w2 [E, D, H],
// evaluated with a grouped GEMM over the dispatch plan's contiguous per-expert segments.
#pragma once
#include <cstdint>
#include <vector>

#include "core/rng.h"
#include "core/tensor.h"
#include "layers/module.h"

namespace moe {

// y[rows of segment e] = x[rows of segment e] w[e]^T, with x [N, K], w [E, M, K],
// offsets [E + 1] (offsets[0] = 0, offsets[E] = N, non-decreasing) -> y [N, M].
// One BLAS GEMM per non-empty segment, forward and backward (dx and dw; empty segments get
// zero weight grads). Differentiable in x and w.
Tensor grouped_matmul(const Tensor& x, const Tensor& w, const std::vector<int64_t>& offsets);

// The whole SwiGLU expert FFN as one op: y[rows of e] = (silu(x w1[e]^T) * (x w3[e]^T)) w2[e]^T,
// x [N, D], w1 and w3 [E, H, D], w2 [E, D, H], offsets as grouped_matmul -> y [N, D]. Each
// expert's forward (and backward) runs as one task, experts in parallel; x w1^T, x w3^T and
// sigmoid(x w1^T) are kept for the backward ([N, H] each; h is recomputed). Differentiable in x,
// w1, w3 and w2; empty experts get zero grads.
Tensor expert_swiglu_ffn(const Tensor& x, const Tensor& w1, const Tensor& w3, const Tensor& w2,
                         const std::vector<int64_t>& offsets);

class Experts : public Module {
 public:
  // w1, w3 ~ N(0, init_std^2), w2 ~ N(0, out_std^2), drawn from init_rng in that order.
  Experts(int64_t num_experts, int64_t d_model, int64_t hidden, double init_std, double out_std, Philox& init_rng,
          DType dtype);

  // xs [N, D] rows grouped by expert per offsets [E + 1] -> [N, D]:
  // y = (silu(x w1_e^T) * (x w3_e^T)) w2_e^T per segment (expert_swiglu_ffn).
  Tensor forward(const Tensor& xs, const std::vector<int64_t>& offsets);
  // Every row through expert 0 (the shared-expert path: one segment of all rows).
  Tensor forward_all(const Tensor& x);

  int64_t num_experts() const { return w1_.size(0); }
  int64_t hidden() const { return w1_.size(1); }
  const Tensor& w1() const { return w1_; }
  const Tensor& w3() const { return w3_; }
  const Tensor& w2() const { return w2_; }

 private:
  Tensor w1_, w3_, w2_;
};

}  // namespace moe
