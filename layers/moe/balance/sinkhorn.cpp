// Strategy "sinkhorn" (S-BASE; Megatron's `sinkhorn` router): in training, top-k of the Sinkhorn
// plan of the logits (balanced by construction); gates from the plain activation. Eval: top-k of s.
// Routes on the device (routes_on_device()) unless a data-parallel batch communicator is installed.
#include <cmath>

#include "core/autograd.h"
#include "core/cpu/activation.h"
#include "core/cpu/softmax.h"
#include "core/device.h"
#include "layers/moe/balance/device_selection.h"
#include "layers/moe/balance/sinkhorn_plan.h"
#include "layers/moe/balance/strategies.h"

namespace moe {
namespace {

// As in Megatron: gates are sigmoid(x) of the selected experts when k = 1 and softmax(x) when
// k > 1, not renormalized over the k choices (cfg.renormalize_gates does not apply here).
// An assignment's score is T * Pi_ij, the share of the token's plan mass on that expert.
// Data parallelism, balance.scope = "global" (default): the plan is the global micro-batch's
// (column sums all-reduced inside each iteration, T = every rank's tokens), which is the single
// process's plan on the concatenated batch; scope = "local": each rank's tokens alone.
class SinkhornBalancer final : public Balancer {
 public:
  explicit SinkhornBalancer(const MoeConfig& cfg) : cfg_(cfg) {}
  std::string name() const override { return "sinkhorn"; }

  Routing select(const RouterOutput& in, Philox&) override {
    check_router_output(in, cfg_.num_experts, "balance.sinkhorn");
    MOE_CHECK(in.logits.defined(), "balance.sinkhorn", "needs the router logits");
    const int64_t k = cfg_.top_k;
    if (on_device(in)) return select_on_device(in);
    Tensor source = k == 1 ? sigmoid(in.logits)
                           : (cfg_.score_function == "softmax" ? in.scores : softmax(in.logits, -1));
    GateOptions gates{false, cfg_.gate_scale};
    if (!in.training) return build_routing(source, select_topk(in.scores, k, "balance.sinkhorn"), gates);
    Selection sel;
    {
      NoGradGuard ng;
      const auto& b = cfg_.balance;
      SinkhornPlan plan = sinkhorn_plan(in.logits, b.sinkhorn_temperature, b.sinkhorn_max_iters, b.sinkhorn_tol,
                                        /*force_log_domain=*/false, batch_communicator(b.scope));
      const int64_t T = plan.tokens, E = plan.experts;
      const double Tg = double(plan.global_tokens);
      std::vector<int64_t> idx(size_t(T * k));
      topk_rows<double>(plan.log_plan.data(), T, E, k, idx.data());
      sel.reserve(size_t(T * k));
      for (int64_t t = 0; t < T; ++t)
        for (int64_t r = 0; r < k; ++r) {
          int64_t e = idx[size_t(t * k + r)];
          sel.push(t, e, Tg * std::exp(plan.log_plan[size_t(t * E + e)]));
        }
    }
    return build_routing(source, sel, gates);
  }

  // On the device when the batch is this process's own: under a data-parallel batch
  // communicator the plan's column sums are all-reduced inside every iteration (host path).
  bool routes_on_device() const override { return batch_communicator(cfg_.balance.scope) == nullptr; }

 private:
  // The host rules on the device: the plan Pi (core/cuda/sinkhorn.h, same iterations and stopping
  // rule) ranked in training, selection score T * Pi_ij; gates from the activation above.
  Routing select_on_device(const RouterOutput& in) {
    CudaBackend& be = cuda_backend("balance.sinkhorn");
    const int64_t k = cfg_.top_k;
    // The activation the gates take, unless the scores already are it.
    const bool want_sigmoid = k == 1, scores_sigmoid = cfg_.score_function == "sigmoid";
    Tensor source = want_sigmoid == scores_sigmoid ? in.scores : be.router_scores(in.logits, want_sigmoid);
    GateOptions gates{false, cfg_.gate_scale};
    if (!in.training) return device_topk_routing(in.scores, {}, k, source, gates);
    const auto& b = cfg_.balance;
    Tensor plan = be.sinkhorn_plan(in.logits, b.sinkhorn_temperature, b.sinkhorn_max_iters, b.sinkhorn_tol);
    return device_topk_routing(plan, {}, k, source, gates, double(in.scores.size(0)));
  }

  MoeConfig cfg_;
};

}  // namespace

std::unique_ptr<Balancer> make_sinkhorn_balancer(const MoeConfig& cfg) {
  return std::make_unique<SinkhornBalancer>(cfg);
}

}  // namespace moe
