// The CUDA backend: CudaBackend (core/device.h) over the kernels of core/cuda. The same sources
// build into the real CUDA library and into the emulation, so every op here also runs, kernel
// by kernel, in the emulation tests. One file per part:
//   backend.cpp    device, memory (caching allocator), copies, fill
//   dense_ops.cpp  embedding, RMSNorm, linear, RoPE, attention, element-wise, cross-entropy
//   moe_ops.cpp    permute / combine and the SwiGLU experts
//   routing_ops.cpp  router scores, top-k, gates, z-loss, the Switch aux loss, the Sinkhorn plan
//                    and the routing statistics' sums
//   gather_ops.cpp  the element gather of a ragged routing's gates
//   selection_ops.cpp  expert choice's and top-p's selections and top-p's entropy loss
//   price_ops.cpp  BIP / quantile dual price iterations and the quantile beta update
//   ssr_ops.cpp    x * scale + row (SSR's plan gates)
//   ep_ops.cpp     row gathers of expert parallelism's exchange
//   op_util.h      argument checks and typed pointers shared by these files
//   optim_ops.cpp  AdamW, sums of squares, scaling
#pragma once
#include <memory>

#include "core/device.h"

namespace moe::cuda {

class Backend final : public CudaBackend {
 public:
  std::string unavailable_reason() override;
  std::string describe() override;
  void synchronize() override;
  std::string take_kernel_profile() override;

  void* allocate(size_t bytes) override;
  void release(void* p, size_t bytes) noexcept override;
  void copy_bytes(void* dst, const void* src, size_t bytes, CopyKind kind) override;
  void copy(const Tensor& dst, const Tensor& src) override;
  void fill(const Tensor& dst, double value) override;

  Tensor embedding(const Tensor& weight, const Tensor& ids) override;
  Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps) override;
  Tensor linear(const Tensor& x, const Tensor& w, const Tensor& bias) override;
  std::vector<Tensor> linear_shared_input(const Tensor& x, const std::vector<Tensor>& weights) override;
  Tensor rope(const Tensor& x, double theta, int64_t pos_offset) override;
  Tensor causal_attention_bshd(const Tensor& q, const Tensor& k, const Tensor& v) override;
  Tensor add(const Tensor& a, const Tensor& b) override;
  Tensor mul_scalar(const Tensor& a, double s) override;
  Tensor swiglu(const Tensor& gate, const Tensor& up) override;
  Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index) override;

  Tensor permute_tokens(const Tensor& x, const DispatchPlanPtr& plan) override;
  Tensor unpermute_combine(const Tensor& y, const Tensor& gate, const DispatchPlanPtr& plan) override;
  Tensor expert_swiglu_ffn(const Tensor& x, const Tensor& w1, const Tensor& w3, const Tensor& w2,
                           const std::vector<int64_t>& offsets) override;

  Tensor router_scores(const Tensor& logits, bool sigmoid) override;
  std::pair<Tensor, Tensor> router_topk(const Tensor& scores, const Tensor& bias, int64_t k) override;
  Tensor router_gates(const Tensor& scores, const Tensor& indices, bool renormalize, double scale) override;
  Tensor gather(const Tensor& x, const Tensor& index) override;
  Tensor router_z_loss(const Tensor& logits) override;
  Tensor row_normalize(const Tensor& x) override;
  Tensor switch_aux(const Tensor& probs, const Tensor& loads, double total, int64_t seq_len) override;
  RouterStatSums router_stat_sums(const Tensor& scores, const Tensor& logits, int64_t experts) override;
  Tensor sinkhorn_plan(const Tensor& logits, double temperature, int max_iters, double tol,
                       int* iterations = nullptr, Tensor* log_d1 = nullptr) override;
  // expert_choice, top_p (selection_ops.cpp)
  std::vector<uint8_t> expert_choice_select(const Tensor& scores, int64_t capacity) override;
  std::pair<Tensor, Tensor> top_p_select(const Tensor& scores, double p) override;
  Tensor routing_entropy(const Tensor& scores) override;
  // BIP and quantile prices (price_ops.cpp)
  void dual_price_iterations(const Tensor& scores, const Tensor& q, int64_t k, int64_t cap, int iters,
                             bool clip) override;
  void quantile_beta_update(const Tensor& beta, const Tensor& target, double rate) override;
  // ssr, null_experts (ssr_ops.cpp)
  Tensor scale_add_row(const Tensor& x, double scale, const Tensor& row) override;

  // expert parallelism's row packing (ep_ops.cpp)
  Tensor select_rows(const Tensor& x, const Tensor& index) override;

  void adamw_update(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                    const AdamWUpdate& u) override;
  std::vector<double> sums_of_squares(const std::vector<Tensor>& xs) override;
  void scale_(const Tensor& x, double s) override;
};

// Installs a Backend as the process's CUDA backend after checking that a device is usable;
// throws "<what>: no CUDA device: <reason>" otherwise. Under the emulation the "device" is
// always there. (Tests call this.)
void install_backend(const char* what);
// Registers Backend as the factory require_cuda_device() uses (the CLI calls this at start).
void register_backend();

}  // namespace moe::cuda
