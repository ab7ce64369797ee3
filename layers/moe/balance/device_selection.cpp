// Device selections of the balancing strategies: see device_selection.h.
#include "layers/moe/balance/device_selection.h"

#include "core/cpu/elementwise.h"
#include "core/device.h"

namespace moe {

Selection device_topk_selection(const Tensor& ranked, const std::vector<float>& bias, int64_t k, Tensor* idx) {
  const char* op = "balance.device_topk";
  const int64_t C = ranked.size(1);
  Tensor b;
  if (!bias.empty()) {
    MOE_CHECK(int64_t(bias.size()) == C, op, "bias of ", bias.size(), " entries for ", C, " columns");
    b = Tensor::from_vector<float>(bias, {C}).to(Device::cuda);
  }
  auto [ids_dev, val] = cuda_backend(op).router_topk(ranked, b, k);
  const std::vector<int32_t> ids = ids_dev.to_vector<int32_t>();
  const std::vector<float> values = val.to_vector<float>();
  Selection sel;
  sel.reserve(ids.size());
  for (size_t a = 0; a < ids.size(); ++a) sel.push(int64_t(a) / k, ids[a], values[a]);
  if (idx != nullptr) *idx = ids_dev;
  return sel;
}

Routing device_topk_routing(const Tensor& ranked, const std::vector<float>& bias, int64_t k,
                            const Tensor& gate_source, const GateOptions& opt, double score_scale) {
  Tensor idx;
  const Selection sel = device_topk_selection(ranked, bias, k, &idx);
  const int64_t A = int64_t(sel.size());
  const std::vector<float> score(sel.score.begin(), sel.score.end());  // fp32 values: exact
  Routing r;
  r.token = Tensor::from_vector<int64_t>(sel.token, {A});
  r.expert = Tensor::from_vector<int64_t>(sel.expert, {A});
  r.score = Tensor::from_vector<float>(score, {A});
  if (score_scale != 1.0) r.score = mul_scalar(r.score, score_scale);
  r.gate = cuda_backend("balance.device_topk").router_gates(gate_source, idx, opt.renormalize, opt.scale);
  return r;
}

ExtraLoss extra_loss(const std::string& name, const Tensor& loss, double coef) {
  Tensor host = loss.device() == Device::cpu ? loss : loss.to(Device::cpu);
  return ExtraLoss{name, mul_scalar(host, coef), host.item_double()};
}

}  // namespace moe
