// The CUDA backend as the core sees it. core/, layers/ and optim/ never include a CUDA header:
// a program that can run on a GPU links a backend (core/cuda/ops: the real CUDA build, or the
// CPU emulation of the same kernel sources in the emulation tests) and installs it once with
// install_cuda_backend() (core/cuda/ops/backend.h). Storage on Device::cuda allocates through it,
// Tensor's copies and fills go through it, and each op that a model step needs hands tensors on
// the device to it, at the top of the op, so layers call the same functions on either device:
//
//   if (x.device() == Device::cuda) return cuda_backend("rms_norm").rms_norm(x, weight, eps);
//
// Mixed precision, which every op below follows: parameters and their grads are fp32 (the
// master weights; AdamW moments too); activations are bf16 or fp32, the dtype of the input
// activation decides; an op converts a weight to the activation dtype where it multiplies,
// accumulates in fp32 and returns the activation dtype. Weight grads come back in fp32.
// The residual stream stays fp32 as under PyTorch autocast: embedding returns fp32, RMSNorm of
// an fp32 input returns activation_dtype() (what the products take), add of fp32 and bf16 sums
// in fp32. (Measured on an H200: a bf16 residual stream cost the balance model ~0.05 of loss.)
// Router and balancing math stay fp32 (DESIGN.md rule 3).
#pragma once
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace moe {

struct DispatchPlan;  // layers/moe/dispatch.h
using DispatchPlanPtr = std::shared_ptr<const DispatchPlan>;

enum class CopyKind { host_to_device, device_to_host, device_to_device };

// One AdamW update of one parameter (optim/adamw.h has the formula).
struct AdamWUpdate {
  double lr = 0;
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double weight_decay = 0;  // already 0 for parameters outside the decay group
  int64_t step = 1;         // this parameter's step count t (bias corrections 1 - b^t)
  double grad_scale = 1;    // each grad element is read as g * float(grad_scale) (clipping's factor)
};

// The per-batch sums behind a layer's routing statistics (RoutingAccumulator in
// layers/moe/routing_stats.h), from its scores [T, Cs] and logits [T, C].
struct RouterStatSums {
  std::vector<double> logit_sum;  // [E] sum over tokens of logit j (the first E columns)
  double entropy_sum = 0;         // sum over tokens of the entropy of the renormalized scores
  int64_t tokens = 0;
  int64_t first_nan = -1;  // flat index t * Cs + j of the first NaN score, -1 when none
};

class CudaBackend {
 public:
  virtual ~CudaBackend() = default;

  // ---- the device ----
  // Empty when a device is usable; otherwise one line saying why ("no CUDA device: ...").
  virtual std::string unavailable_reason() = 0;
  virtual std::string describe() = 0;  // e.g. "NVIDIA H100 80GB HBM3 (sm_90)" or "CUDA emulation"
  virtual void synchronize() = 0;
  // MOE_KERNEL_PROFILE=1: the table of GPU time per kernel since the last call (core/cuda/
  // kernel_profile.h), which it then resets; empty when profiling is off.
  virtual std::string take_kernel_profile() = 0;

  // ---- memory (through the caching allocator) and raw copies ----
  virtual void* allocate(size_t bytes) = 0;
  virtual void release(void* p, size_t bytes) noexcept = 0;
  virtual void copy_bytes(void* dst, const void* src, size_t bytes, CopyKind kind) = 0;

  // ---- Tensor primitives, no autograd: both tensors on the device, any strides ----
  // dst = src element-wise (same shape); converts between dtypes (floating <-> floating,
  // index <-> index).
  virtual void copy(const Tensor& dst, const Tensor& src) = 0;
  virtual void fill(const Tensor& dst, double value) = 0;

  // ---- ops of a dense transformer step: same contracts as core/cpu, autograd recorded ----
  virtual Tensor embedding(const Tensor& weight, const Tensor& ids) = 0;  // output fp32 (the residual stream)
  virtual Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps) = 0;
  virtual Tensor linear(const Tensor& x, const Tensor& w, const Tensor& bias) = 0;
  virtual std::vector<Tensor> linear_shared_input(const Tensor& x, const std::vector<Tensor>& weights) = 0;
  virtual Tensor rope(const Tensor& x, double theta, int64_t pos_offset) = 0;
  virtual Tensor causal_attention_bshd(const Tensor& q, const Tensor& k, const Tensor& v) = 0;
  virtual Tensor add(const Tensor& a, const Tensor& b) = 0;  // same shapes (no broadcasting)
  virtual Tensor mul_scalar(const Tensor& a, double s) = 0;
  virtual Tensor swiglu(const Tensor& gate, const Tensor& up) = 0;
  // logits [N, V] (bf16 or fp32), targets [N] (on the device): mean loss, fp32, one element.
  virtual Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index) = 0;

  // ---- the MoE layer's data path (routing decisions are made in fp32 on the host) ----
  virtual Tensor permute_tokens(const Tensor& x, const DispatchPlanPtr& plan) = 0;
  virtual Tensor unpermute_combine(const Tensor& y, const Tensor& gate, const DispatchPlanPtr& plan) = 0;
  virtual Tensor expert_swiglu_ffn(const Tensor& x, const Tensor& w1, const Tensor& w3, const Tensor& w2,
                                   const std::vector<int64_t>& offsets) = 0;

  // ---- routing on the device (Balancer::routes_on_device(), balance/device_selection.h): fp32, [T, E] ----
  // scores = softmax | sigmoid of logits [T, E] (fp32) over the experts; autograd.
  virtual Tensor router_scores(const Tensor& logits, bool sigmoid) = 0;
  // Top-k of each row of scores (+ bias [E] fp32 when defined: it shifts the ranking only), sorted
  // descending, ties to the lower index: {indices [T, k] i32, values [T, k] f32 (the ranked,
  // shifted values)}. No autograd.
  virtual std::pair<Tensor, Tensor> router_topk(const Tensor& scores, const Tensor& bias, int64_t k) = 0;
  // Gates [T * k] fp32: scores at indices, renormalized per token when asked, times scale; autograd
  // into scores (build_routing's gate on the host). An index outside [0, E) (e.g. -1 padding of a
  // ragged selection) is no choice: gate 0, left out of the renormalization.
  virtual Tensor router_gates(const Tensor& scores, const Tensor& indices, bool renormalize, double scale) = 0;
  // out [A] = x.flat[index[a]] for x fp32 (any shape) and index [A] i32 on the device, whose
  // entries must be distinct (the backward writes dx[index[a]] = dout[a], no atomics); autograd.
  // Picks a ragged routing's gates out of router_gates' padded [T * K] output.
  virtual Tensor gather(const Tensor& x, const Tensor& index) = 0;
  // Router z-loss mean_t logsumexp(logits_t)^2: 0-dim fp32; autograd.
  virtual Tensor router_z_loss(const Tensor& logits) = 0;
  // x / (row sums of x) for x [T, E] fp32 (the aux loss's probabilities of sigmoid scores); autograd.
  virtual Tensor row_normalize(const Tensor& x) = 0;
  // Switch aux loss E * mean_sequences sum_e f_e P_e with f = loads / total and P the mean of probs
  // over each sequence's seq_len rows; loads [T / seq_len, E] i32 on the device (seq_len = T: the
  // micro-batch's [E] loads). 0-dim fp32; autograd into probs (f is a constant).
  virtual Tensor switch_aux(const Tensor& probs, const Tensor& loads, double total, int64_t seq_len) = 0;
  // RouterStatSums of scores [T, Cs] and logits [T, C] (fp32, on the device; experts <= C),
  // summed there: only E + 2 numbers come down. No autograd.
  virtual RouterStatSums router_stat_sums(const Tensor& scores, const Tensor& logits, int64_t experts) = 0;
  // S-BASE's Sinkhorn plan of logits [T, E] (fp32): Pi [T, E] fp32 on the device, rows summing to
  // 1 / T and columns to 1 / E (core/cuda/sinkhorn.h; the host sinkhorn_plan's iterations and
  // stopping rule: temperature xi, at most max_iters, mean change of d1 below tol). No autograd
  // (the plan only selects). Sets *iterations (when given) to the alternations run, and *log_d1
  // (when given) to the plan's log d1 [E] (f64, on the device; the host SinkhornPlan::log_d1).
  virtual Tensor sinkhorn_plan(const Tensor& logits, double temperature, int max_iters, double tol,
                               int* iterations = nullptr, Tensor* log_d1 = nullptr) = 0;
  // expert_choice and top_p (selection_ops.cpp over core/cuda/selection.h), scores [T, E] fp32:
  // Expert choice: each expert's `capacity` highest-scoring tokens (ties to the lower token), as a
  // [T, E] 0 / 1 mask copied to the host (T * E bytes: the one copy down). 1 <= capacity <= T.
  virtual std::vector<uint8_t> expert_choice_select(const Tensor& scores, int64_t capacity) = 0;
  // Top-p: per token, the experts in descending score order (ties to the lower expert) while the
  // running sum (double) of the taken scores is below p: {ranked [T, E] i32 (the taken experts,
  // then -1), counts [T] i32}, both on the device. No autograd (selection only).
  virtual std::pair<Tensor, Tensor> top_p_select(const Tensor& scores, double p) = 0;
  // Top-p's entropy loss mean_t -sum_j s_tj log(s_tj + 1e-30): 0-dim fp32; autograd into scores.
  virtual Tensor routing_entropy(const Tensor& scores) = 0;
  // BIP and quantile balancing (balance/bip.cpp, quantile.cpp; core/cuda/dual_prices.h): `iters`
  // dual price iterations (dual_price_iterations of balance/dual_prices.h) on scores [T, E] fp32,
  // from the prices q [E] fp32 on the device, updated in place; capacity cap, orders capped at E
  // and T, max(0, .) on both passes when clip. fp32 math (the host's is double). No autograd.
  virtual void dual_price_iterations(const Tensor& scores, const Tensor& q, int64_t k, int64_t cap, int iters,
                                     bool clip) = 0;
  // The quantile balancer's step, beta and target [E] fp32 on the device: beta <- beta + rate
  // (target - beta) in double, then re-centred to mean 0 (rounded to fp32), in place: the host's
  // arithmetic. No autograd.
  virtual void quantile_beta_update(const Tensor& beta, const Tensor& target, double rate) = 0;
  // -- ssr, null_experts --
  // x * scale + row broadcast over the rows: x [T, E] fp32, row [E] f64 on the device (a constant),
  // computed in double, fp32 out; autograd into x (SSR's plan gate logits x / xi + log d1).
  virtual Tensor scale_add_row(const Tensor& x, double scale, const Tensor& row) = 0;

  // ---- expert parallelism's row exchange (layers/moe/expert_parallel.cpp; ep_ops.cpp) ----
  // out [m, D] = x[index[i]] for x [n, D] (bf16 or fp32, on the device) and index [m] i32 on the
  // device with entries in [0, n) (m may be 0): packing and regrouping the rows sent between the
  // ranks. No autograd: the EP ops record the exchange's backward themselves.
  virtual Tensor select_rows(const Tensor& x, const Tensor& index) = 0;

  // ---- optimizer ----
  virtual void adamw_update(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                            const AdamWUpdate& u) = 0;
  // Each tensor's sum of squares (fp32 / bf16 in, accumulated in fp32 on the device), all copied
  // down at once: one synchronization for every gradient of a step, not one per gradient.
  virtual std::vector<double> sums_of_squares(const std::vector<Tensor>& xs) = 0;
  virtual void scale_(const Tensor& x, double s) = 0;  // x *= s in place

  // The activation dtype of this run (bf16 for training on a GPU, fp32 for exact checks).
  DType activation_dtype() const { return activation_dtype_; }
  void set_activation_dtype(DType dt) { activation_dtype_ = dt; }

 private:
  DType activation_dtype_ = DType::bf16;
};

// Installs the backend for the whole process (the last call wins); nullptr uninstalls.
void install_cuda_backend(std::shared_ptr<CudaBackend> backend);
bool cuda_backend_installed();
// The installed backend; throws naming `what` when this program has none ("built without the
// CUDA backend"). Whether a device is usable is the installer's check (unavailable_reason()).
CudaBackend& cuda_backend(const char* what);

// A program that links a backend (the moetrain CLI built with the CUDA toolkit) registers how to
// make one; nothing touches the device until a run asks for it.
void register_cuda_backend_factory(std::function<std::shared_ptr<CudaBackend>()> make);
// For a run on the device: installs the registered backend if none is installed yet and checks
// that it has a usable device. Throws one line naming `what` otherwise ("... built without the
// CUDA backend ..." or "no CUDA device: <reason>").
CudaBackend& require_cuda_device(const char* what);

// Throws naming `op` unless every defined tensor is on the same device; returns that device.
Device common_device(const char* op, std::initializer_list<Tensor> tensors);

}  // namespace moe
