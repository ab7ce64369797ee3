// Strategy "loss_free" (Wang et al. 2024, arXiv 2408.15664; DeepSeek-V3): a per-expert bias b
// shifts the selection (top-k of s + b) but never the gates; b moves after each optimizer step.
#include "layers/moe/balance/device_selection.h"
#include "layers/moe/balance/strategies.h"

namespace moe {
namespace {

// Updates, from the global batch's loads (mean m = mean_i load_i):
//   sign:         b_i += u * sign(m - load_i)          (as published; sign(0) = 0)
//   proportional: b_i += u * (m - load_i) / m          (ours: the paper's softmax variant
//                 b_i += u * (m - load_i) does not say how loads are scaled; dividing by the
//                 mean makes u a rate per unit of relative violation, independent of batch size)
// b is fp32 and the arithmetic is fp32, so one sign step from 0 is exactly float(u).
class LossFreeBalancer final : public Balancer {
 public:
  explicit LossFreeBalancer(const MoeConfig& cfg) : cfg_(cfg), bias_(size_t(cfg.num_experts), 0.0f) {}
  std::string name() const override { return "loss_free"; }

  Routing select(const RouterOutput& in, Philox&) override {
    check_router_output(in, cfg_.num_experts, "balance.loss_free");
    if (on_device(in)) return device_topk_routing(in.scores, bias_, cfg_.top_k, in.scores, token_choice_gates(cfg_));
    Selection sel = select_topk(shifted_scores(in.scores, bias_, +1.0), cfg_.top_k, "balance.loss_free");
    return build_routing(in.scores, sel, token_choice_gates(cfg_));  // gates from the unbiased s
  }

  bool routes_on_device() const override { return true; }

  void update(const std::vector<double>& loads) override {
    MOE_CHECK(loads.size() == bias_.size(), "balance.loss_free.update", "got ", loads.size(), " loads for ",
              bias_.size(), " experts");
    double m = 0;
    for (double l : loads) m += l;
    m /= double(loads.size());
    const float u = float(cfg_.balance.bias_update_rate);
    const bool sign = cfg_.balance.bias_update == "sign";
    for (size_t i = 0; i < bias_.size(); ++i) {
      float step;
      if (sign)
        step = loads[i] < m ? u : (loads[i] > m ? -u : 0.0f);
      else
        step = m > 0 ? u * float((m - loads[i]) / m) : 0.0f;
      bias_[i] += step;
    }
  }

  std::vector<double> state_vector() const override { return {bias_.begin(), bias_.end()}; }
  std::map<std::string, std::vector<double>> state() const override { return {{"bias", state_vector()}}; }
  void load_state(const std::map<std::string, std::vector<double>>& s) override {
    std::vector<double> b = state_entry(s, "bias", bias_.size(), "loss_free");
    for (size_t i = 0; i < b.size(); ++i) bias_[i] = float(b[i]);  // saved from fp32: exact
  }

 private:
  MoeConfig cfg_;
  std::vector<float> bias_;
};

}  // namespace

std::unique_ptr<Balancer> make_loss_free_balancer(const MoeConfig& cfg) {
  return std::make_unique<LossFreeBalancer>(cfg);
}

}  // namespace moe
