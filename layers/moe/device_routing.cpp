// Device routing of the plain top-k strategies and S-BASE: see device_routing.h.
#include "layers/moe/device_routing.h"

#include "core/cpu/elementwise.h"
#include "core/device.h"

namespace moe {

DeviceRouting route_on_device(const Tensor& x2, const Tensor& weight, ScoreFunction fn, const DeviceTopk& spec,
                              int64_t top_k, int64_t seq_len, double z_loss_coef, bool training) {
  const char* op = "MoeLayer.device_routing";
  MOE_CHECK(x2.dim() == 2 && x2.device() == Device::cuda && weight.device() == Device::cuda &&
                weight.dtype() == DType::f32 && weight.dim() == 2 && weight.size(1) == x2.size(1),
            op, "expected x [T, D] and an fp32 weight [E, D] on the cuda device, got x ", x2.shape_str(), " and w ",
            weight.shape_str());
  CudaBackend& be = cuda_backend(op);
  const int64_t T = x2.size(0), E = weight.size(0), k = top_k, A = T * k;
  MOE_CHECK(T >= 1, op, "no tokens to route");

  // Router in fp32: logits = x W^T, scores = softmax | sigmoid(logits), both recorded.
  Tensor xf = x2.dtype() == DType::f32 ? x2 : x2.to(DType::f32);
  Tensor logits = be.linear(xf, weight, Tensor());
  Tensor scores = be.router_scores(logits, fn == ScoreFunction::sigmoid);

  DeviceRouting out;
  // The small copies down: the statistics' sums (E + 2 numbers), ids and ranked values [T, k].
  out.stat_sums = be.router_stat_sums(scores, logits, E);
  const int64_t nan_at = out.stat_sums.first_nan;
  MOE_CHECK(nan_at < 0, op, "router scores contain NaN (token ", nan_at / E, ", expert ", nan_at % E, ")");

  // S-BASE in training ranks the plan Pi of the logits (its selection score is T * Pi_ij, the
  // token's share of plan mass on the expert); everything else ranks the scores (+ bias).
  const bool by_plan = spec.sinkhorn.has_value() && training;
  MOE_CHECK(!spec.sinkhorn || (spec.bias.empty() && spec.aux == DeviceTopk::Aux::none), op,
            "the Sinkhorn selection takes no bias and no aux loss");
  Tensor bias;
  if (!spec.bias.empty()) {
    MOE_CHECK(int64_t(spec.bias.size()) == E, op, "bias of ", spec.bias.size(), " entries for ", E, " experts");
    bias = Tensor::from_vector<float>(spec.bias, {E}).to(Device::cuda);
  }
  Tensor ranked = scores;
  if (by_plan) {
    const DeviceTopk::Sinkhorn& sk = *spec.sinkhorn;
    ranked = be.sinkhorn_plan(logits, sk.temperature, sk.max_iters, sk.tol);
  }
  auto [idx, val] = be.router_topk(ranked, bias, k);
  std::vector<int32_t> ids = idx.to_vector<int32_t>();
  std::vector<int64_t> token(static_cast<size_t>(A)), expert(static_cast<size_t>(A));
  for (int64_t a = 0; a < A; ++a) token[size_t(a)] = a / k, expert[size_t(a)] = ids[size_t(a)];
  Routing& r = out.routing;
  r.token = Tensor::from_vector<int64_t>(token, {A});
  r.expert = Tensor::from_vector<int64_t>(expert, {A});
  r.score = val.to(Device::cpu).reshape({A});
  if (by_plan) r.score = mul_scalar(r.score, double(T));
  // The gate source: the scores, or the activation of the logits the strategy names (the scores
  // themselves when that is the router's own score function).
  Tensor source = scores;
  if (spec.gates != DeviceTopk::Gates::scores) {
    const bool sig = spec.gates == DeviceTopk::Gates::sigmoid_logits;
    if (sig != (fn == ScoreFunction::sigmoid)) source = be.router_scores(logits, sig);
  }
  r.gate = be.router_gates(source, idx, spec.renormalize, spec.gate_scale);

  if (spec.aux != DeviceTopk::Aux::none) {
    Tensor probs = fn == ScoreFunction::sigmoid ? be.row_normalize(scores) : scores;
    Tensor loss;
    if (spec.aux == DeviceTopk::Aux::micro_batch) {
      loss = be.switch_aux(probs, be.load_counts(idx.reshape({A}), E), double(A), T);
    } else {
      const int64_t S = seq_len;
      MOE_CHECK(S >= 1 && T % S == 0, "router.aux_variant", "per_sequence needs T (", T,
                ") to be a multiple of seq_len (", S, ")");
      std::vector<int32_t> seq_loads(size_t((T / S) * E), 0);
      for (int64_t a = 0; a < A; ++a) seq_loads[size_t(((a / k) / S) * E + ids[size_t(a)])] += 1;
      Tensor sl = Tensor::from_vector<int32_t>(seq_loads, {T / S, E}).to(Device::cuda);
      loss = be.switch_aux(probs, sl, double(k * S), S);
    }
    Tensor lh = loss.to(Device::cpu);
    out.losses.push_back(ExtraLoss{"aux", mul_scalar(lh, spec.aux_alpha), lh.item_double()});
  }
  if (z_loss_coef > 0) {
    Tensor zh = be.router_z_loss(logits).to(Device::cpu);
    out.losses.push_back(ExtraLoss{"z", mul_scalar(zh, z_loss_coef), zh.item_double()});
  }
  return out;
}

}  // namespace moe
