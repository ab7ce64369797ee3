// Device selections of the balancing strategies: see device_selection.h.
#include "layers/moe/balance/device_selection.h"

#include "core/cpu/elementwise.h"
#include "core/device.h"

namespace moe {

Routing device_topk_routing(const Tensor& ranked, const std::vector<float>& bias, int64_t k,
                            const Tensor& gate_source, const GateOptions& opt, double score_scale) {
  const char* op = "balance.device_topk";
  CudaBackend& be = cuda_backend(op);
  const int64_t T = ranked.size(0), C = ranked.size(1), A = T * k;
  Tensor b;
  if (!bias.empty()) {
    MOE_CHECK(int64_t(bias.size()) == C, op, "bias of ", bias.size(), " entries for ", C, " columns");
    b = Tensor::from_vector<float>(bias, {C}).to(Device::cuda);
  }
  auto [idx, val] = be.router_topk(ranked, b, k);
  const std::vector<int32_t> ids = idx.to_vector<int32_t>();
  std::vector<int64_t> token(static_cast<size_t>(A)), expert(static_cast<size_t>(A));
  for (int64_t a = 0; a < A; ++a) token[size_t(a)] = a / k, expert[size_t(a)] = ids[size_t(a)];
  Routing r;
  r.token = Tensor::from_vector<int64_t>(token, {A});
  r.expert = Tensor::from_vector<int64_t>(expert, {A});
  r.score = val.to(Device::cpu).reshape({A});
  if (score_scale != 1.0) r.score = mul_scalar(r.score, score_scale);
  r.gate = be.router_gates(gate_source, idx, opt.renormalize, opt.scale);
  return r;
}

ExtraLoss extra_loss(const std::string& name, const Tensor& loss, double coef) {
  Tensor host = loss.device() == Device::cpu ? loss : loss.to(Device::cpu);
  return ExtraLoss{name, mul_scalar(host, coef), host.item_double()};
}

}  // namespace moe
