// Routing ops on the device (Balancer::routes_on_device(), layers/moe/balance/device_selection.h): router
// scores, top-k (optionally bias-shifted), gates, z-loss and the Switch aux loss, fp32 throughout,
// each over the kernels of core/cuda with its autograd backward; and S-BASE's Sinkhorn plan.
#include "core/autograd.h"
#include "core/cuda/elementwise.h"
#include "core/cuda/gates.h"
#include "core/cuda/ops/cuda_backend.h"
#include "core/cuda/ops/op_util.h"
#include "core/cuda/router.h"
#include "core/cuda/router_losses.h"
#include "core/cuda/router_stat_sums.h"
#include "core/cuda/sinkhorn.h"
#include "core/cuda/softmax.h"

namespace moe::cuda {

Tensor Backend::router_scores(const Tensor& logits, bool sigmoid) {
  const char* op = "router_scores";
  check_f32_2d(logits, op, "logits");
  const long T_ = long(logits.size(0)), E = long(logits.size(1));
  Tensor lc = logits.detach().contiguous();
  Tensor out = Tensor::empty({T_, E}, DType::f32, Device::cuda);
  if (sigmoid)
    sigmoid_forward<float>(cf(lc), mf(out), size_t(T_ * E));
  else
    softmax_forward<float>(cf(lc), mf(out), T_, E);
  if (needs_grad({logits}))
    record(op, {out}, [logits, out, sigmoid, T_, E](const std::vector<Tensor>& g) {
      Tensor gy = grad_f32(g[0]);
      Tensor gx = Tensor::empty({T_, E}, DType::f32, Device::cuda);
      Tensor y = out.detach();
      if (sigmoid)
        sigmoid_backward<float>(cf(y), cf(gy), mf(gx), size_t(T_ * E));
      else
        softmax_backward<float>(cf(y), cf(gy), mf(gx), T_, E);
      accumulate_grad(logits, gx);
    });
  return out;
}

std::pair<Tensor, Tensor> Backend::router_topk(const Tensor& scores, const Tensor& bias, int64_t k) {
  const char* op = "router_topk";
  check_f32_2d(scores, op, "scores");
  const long T_ = long(scores.size(0));
  const int E = int(scores.size(1));
  MOE_CHECK(k >= 1 && k <= E, op, "top-k needs 1 <= k <= ", E, ", got k = ", k);
  Tensor sc = scores.detach().contiguous();
  Tensor idx = Tensor::empty({T_, k}, DType::i32, Device::cuda);
  Tensor val = Tensor::empty({T_, k}, DType::f32, Device::cuda);
  if (bias.defined()) {
    MOE_CHECK(bias.device() == Device::cuda && bias.dtype() == DType::f32 && bias.numel() == E, op,
              "bias must be [", E, "] fp32 on the cuda device, got ", dtype_name(bias.dtype()), " ", bias.shape_str());
    Tensor bc = bias.detach().contiguous();
    router_topk_biased(cf(sc), cf(bc), mf(val), idx.device_data<int32_t>(), T_, E, int(k));
  } else {
    cuda::router_topk(cf(sc), mf(val), idx.device_data<int32_t>(), T_, E, int(k));
  }
  return {idx, val};
}

Tensor Backend::router_gates(const Tensor& scores, const Tensor& indices, bool renormalize, double scale) {
  const char* op = "router_gates";
  check_f32_2d(scores, op, "scores");
  const long T_ = long(scores.size(0));
  const int E = int(scores.size(1));
  MOE_CHECK(indices.defined() && indices.device() == Device::cuda && indices.dtype() == DType::i32 &&
                indices.dim() == 2 && indices.size(0) == T_,
            op, "indices must be [", T_, ", k] i32 on the cuda device");
  const int k = int(indices.size(1));
  Tensor sc = scores.detach().contiguous(), ic = indices.contiguous();
  Tensor gates = Tensor::empty({int64_t(T_) * k}, DType::f32, Device::cuda);
  gates_forward(cf(sc), ci(ic), T_, E, k, E, renormalize, float(scale), mf(gates));
  if (needs_grad({scores}))
    record(op, {gates}, [scores, sc, ic, renormalize, scale, T_, E, k](const std::vector<Tensor>& g) {
      Tensor gg = grad_f32(g[0]);
      Tensor gs = Tensor::empty({T_, E}, DType::f32, Device::cuda);
      gates_backward(cf(sc), ci(ic), cf(gg), T_, E, k, E, renormalize, float(scale), mf(gs));
      accumulate_grad(scores, gs);
    });
  return gates;
}

Tensor Backend::router_z_loss(const Tensor& logits) {
  const char* op = "router_z_loss";
  check_f32_2d(logits, op, "logits");
  const long T_ = long(logits.size(0));
  const int E = int(logits.size(1));
  MOE_CHECK(T_ > 0, op, "expected logits [T, E] with T > 0, got ", logits.shape_str());
  Tensor lc = logits.detach().contiguous();
  Tensor lse = Tensor::empty({T_}, DType::f32, Device::cuda);
  Tensor out = Tensor::empty({}, DType::f32, Device::cuda);
  router_z_loss_forward(cf(lc), T_, E, mf(lse), mf(out));
  if (needs_grad({logits}))
    record(op, {out}, [logits, lc, lse, T_, E](const std::vector<Tensor>& g) {
      const float go = float(g[0].item_double());  // one scalar to the host
      Tensor gx = Tensor::empty({T_, E}, DType::f32, Device::cuda);
      router_z_loss_backward(cf(lc), cf(lse), go, T_, E, mf(gx));
      accumulate_grad(logits, gx);
    });
  return out;
}

Tensor Backend::row_normalize(const Tensor& x) {
  const char* op = "row_normalize";
  check_f32_2d(x, op, "x");
  const long T_ = long(x.size(0)), E = long(x.size(1));
  Tensor xc = x.detach().contiguous();
  Tensor out = Tensor::empty({T_, E}, DType::f32, Device::cuda);
  row_normalize_forward(cf(xc), mf(out), T_, E);
  if (needs_grad({x}))
    record(op, {out}, [x, xc, out, T_, E](const std::vector<Tensor>& g) {
      Tensor gy = grad_f32(g[0]);
      Tensor gx = Tensor::empty({T_, E}, DType::f32, Device::cuda);
      Tensor y = out.detach();
      row_normalize_backward(cf(xc), cf(y), cf(gy), mf(gx), T_, E);
      accumulate_grad(x, gx);
    });
  return out;
}

Tensor Backend::switch_aux(const Tensor& probs, const Tensor& loads, double total, int64_t seq_len) {
  const char* op = "switch_aux";
  check_f32_2d(probs, op, "probs");
  const long T_ = long(probs.size(0));
  const int E = int(probs.size(1));
  MOE_CHECK(seq_len >= 1 && T_ % seq_len == 0, op, "T (", T_, ") must be a multiple of seq_len (", seq_len, ")");
  const long B = T_ / long(seq_len);
  MOE_CHECK(loads.defined() && loads.device() == Device::cuda && loads.dtype() == DType::i32 &&
                loads.numel() == int64_t(B) * E,
            op, "loads must be [", B, ", ", E, "] i32 on the cuda device");
  Tensor pc = probs.detach().contiguous(), lc = loads.contiguous();
  Tensor out = Tensor::empty({}, DType::f32, Device::cuda);
  const bool whole = seq_len == T_;
  if (whole)
    switch_aux_forward(cf(pc), ci(lc), total, T_, E, mf(out));
  else
    sequence_aux_forward(cf(pc), ci(lc), total, T_, long(seq_len), E, mf(out));
  if (needs_grad({probs}))
    record(op, {out}, [probs, lc, total, T_, E, seq_len, whole](const std::vector<Tensor>& g) {
      const float go = float(g[0].item_double());
      Tensor gp = Tensor::empty({T_, E}, DType::f32, Device::cuda);
      if (whole)
        switch_aux_backward(ci(lc), total, go, T_, E, mf(gp));
      else
        sequence_aux_backward(ci(lc), total, go, T_, long(seq_len), E, mf(gp));
      accumulate_grad(probs, gp);
    });
  return out;
}

RouterStatSums Backend::router_stat_sums(const Tensor& scores, const Tensor& logits, int64_t experts) {
  const char* op = "router_stat_sums";
  check_f32_2d(scores, op, "scores");
  check_f32_2d(logits, op, "logits");
  MOE_CHECK(scores.size(0) == logits.size(0) && experts >= 1 && experts <= logits.size(1), op, "scores ",
            scores.shape_str(), " and logits ", logits.shape_str(), " for ", experts,
            " experts: expected the same tokens and at least that many logit columns");
  const long T_ = long(scores.size(0));
  Tensor sc = scores.detach().contiguous(), lc = logits.detach().contiguous();
  Tensor out = Tensor::empty({experts + 2}, DType::f64, Device::cuda);
  cuda::router_stat_sums(cf(sc), cf(lc), T_, int(sc.size(1)), int(lc.size(1)), int(experts),
                         out.device_data<double>());
  const std::vector<double> v = out.to_vector<double>();  // the one copy down
  RouterStatSums r;
  r.logit_sum.assign(v.begin(), v.begin() + experts);
  r.entropy_sum = v[size_t(experts)];
  r.first_nan = int64_t(v[size_t(experts) + 1]);
  r.tokens = T_;
  return r;
}

Tensor Backend::sinkhorn_plan(const Tensor& logits, double temperature, int max_iters, double tol, int* iterations,
                              Tensor* log_d1) {
  const char* op = "sinkhorn_plan";
  check_f32_2d(logits, op, "logits");
  MOE_CHECK(temperature > 0, "router.sinkhorn_temperature", "must be > 0, got ", temperature);
  MOE_CHECK(max_iters >= 1, "router.sinkhorn_max_iters", "must be >= 1, got ", max_iters);
  MOE_CHECK(tol >= 0, "router.sinkhorn_tol", "must be >= 0, got ", tol);
  const long T_ = long(logits.size(0));
  const int E = int(logits.size(1));
  MOE_CHECK(T_ > 0 && E > 0, op, "expected logits [T, E] with T, E > 0, got ", logits.shape_str());
  Tensor lc = logits.detach().contiguous();
  Tensor plan = Tensor::empty({T_, E}, DType::f32, Device::cuda);
  Tensor d1 = Tensor::empty({E}, DType::f64, Device::cuda);
  cuda::SinkhornOutputs out;  // the plan from the last iteration kernel, no kernel of its own
  out.log_d1 = d1.device_data<double>();
  out.plan = mf(plan);
  const cuda::SinkhornStats stats = cuda::sinkhorn_run(cf(lc), T_, E, float(temperature), max_iters, float(tol), out);
  if (iterations) *iterations = stats.iterations;
  if (log_d1) *log_d1 = d1;
  return plan;
}

}  // namespace moe::cuda
