// Strategy "ssr" (Selective Sinkhorn Routing, arXiv 2511.08972): in training, with probability p
// per forward, route by the Sinkhorn plan with gates from the plan; otherwise plain top-k.
#include <algorithm>
#include <cmath>

#include "core/autograd.h"
#include "core/cpu/elementwise.h"
#include "core/cpu/reduce.h"
#include "core/device.h"
#include "layers/moe/balance/device_selection.h"
#include "layers/moe/balance/sinkhorn_plan.h"
#include "layers/moe/balance/strategies.h"

namespace moe {

namespace {

// The coin: one uniform draw from the layer's RNG stream per training select() (so the run's
// Philox offset, saved in checkpoints, reproduces every flip on resume); eval draws nothing.
// With gradient accumulation each micro-batch flips its own coin.
// Data parallelism, balance.scope = "global" (default): every rank's stream sits at the same
// offset, so the ranks flip the same coin (an all-reduce max makes sure, as the plan's
// collectives need every rank), and the plan is the global micro-batch's (see sinkhorn_plan):
// the single process's routing. scope = "local": the plan of each rank's tokens alone.
// Plan gates: Pi_ij renormalized over the token's k selected experts. With d0, d1 held constant
// (they are normalizers, as in S-BASE), Pi_ij / sum_sel Pi_il = softmax over the selected of
// (x_ij / xi + log d1_j): that is what is built, so the router gets a gradient on plan steps too.
// Routes on the device (routes_on_device()) unless a data-parallel batch communicator is
// installed; the coin is drawn the same way on both paths, so the flips (and resume) agree.
class SsrBalancer final : public Balancer {
 public:
  explicit SsrBalancer(const MoeConfig& cfg) : cfg_(cfg) {}
  std::string name() const override { return "ssr"; }

  Routing select(const RouterOutput& in, Philox& rng) override {
    check_router_output(in, cfg_.num_experts, "balance.ssr");
    Communicator* comm = in.training ? batch_communicator(cfg_.balance.scope) : nullptr;
    double coin = in.training && rng.uniform() < cfg_.balance.ssr_probability ? 1.0 : 0.0;
    if (comm) comm->all_reduce_max(&coin, 1);
    const bool use_plan = coin > 0;
    if (on_device(in)) return select_on_device(in, use_plan);
    if (!use_plan)
      return build_routing(in.scores, select_topk(in.scores, cfg_.top_k, "balance.ssr"), token_choice_gates(cfg_));
    MOE_CHECK(in.logits.defined(), "balance.ssr", "needs the router logits");
    const auto& b = cfg_.balance;
    const int64_t k = cfg_.top_k, T = in.scores.size(0), E = cfg_.num_experts;
    const double xi = b.sinkhorn_temperature;
    Selection sel;
    std::vector<double> offset(size_t(T * k)), row_shift(size_t(T * k));
    {
      NoGradGuard ng;
      SinkhornPlan plan = sinkhorn_plan(in.logits, xi, b.sinkhorn_max_iters, b.sinkhorn_tol, false, comm);
      const double Tg = double(plan.global_tokens);
      std::vector<int64_t> idx(size_t(T * k));
      topk_rows<double>(plan.log_plan.data(), T, E, k, idx.data());
      std::vector<double> x = in.logits.detach().contiguous().to_double_vector();
      sel.reserve(size_t(T * k));
      for (int64_t t = 0; t < T; ++t) {
        double zmax = -INFINITY;
        for (int64_t r = 0; r < k; ++r) {
          int64_t e = idx[size_t(t * k + r)];
          sel.push(t, e, Tg * std::exp(plan.log_plan[size_t(t * E + e)]));
          offset[size_t(t * k + r)] = plan.log_d1[size_t(e)];
          zmax = std::max(zmax, x[size_t(t * E + e)] / xi + plan.log_d1[size_t(e)]);
        }
        for (int64_t r = 0; r < k; ++r) row_shift[size_t(t * k + r)] = offset[size_t(t * k + r)] - zmax;
      }
    }
    // gathered logits / xi + (log d1_j - max over the token's selected) -> per-token softmax.
    Routing r = build_routing(in.logits, sel, GateOptions{});
    const DType dt = in.logits.dtype();
    Tensor z = add(mul_scalar(r.gate, 1.0 / xi), Tensor::from_vector<double>(row_shift, {T * k}).to(dt));
    Tensor e = exp(z).reshape({T, k});
    Tensor g = div(e, sum(e, {1}, true)).reshape({T * k});
    r.gate = cfg_.gate_scale != 1.0 ? mul_scalar(g, cfg_.gate_scale) : g;
    return r;
  }

  // On the device when the batch is this process's own: under a data-parallel batch
  // communicator the plan's column sums (and the coin) are all-reduced (host path).
  bool routes_on_device() const override { return batch_communicator(cfg_.balance.scope) == nullptr; }

 private:
  // The host rules on the device. Top-k steps: device_topk_routing of the scores. Plan steps:
  // top-k of Pi (core/cuda/sinkhorn.h, the host's iterations and stopping rule), selection score
  // T * Pi_ij, gates softmax over the selected of y = x / xi + log d1: the full-row softmax of y
  // renormalized over the selected (the selected are the row's largest y, so nothing underflows),
  // differentiable into the logits with d1 constant.
  Routing select_on_device(const RouterOutput& in, bool use_plan) {
    if (!use_plan) return device_topk_routing(in.scores, {}, cfg_.top_k, in.scores, token_choice_gates(cfg_));
    MOE_CHECK(in.logits.defined(), "balance.ssr", "needs the router logits");
    CudaBackend& be = cuda_backend("balance.ssr");
    const auto& b = cfg_.balance;
    const double xi = b.sinkhorn_temperature;
    Tensor log_d1;
    Tensor plan = be.sinkhorn_plan(in.logits, xi, b.sinkhorn_max_iters, b.sinkhorn_tol, nullptr, &log_d1);
    Tensor source = be.router_scores(be.scale_add_row(in.logits, 1.0 / xi, log_d1), false);
    return device_topk_routing(plan, {}, cfg_.top_k, source, GateOptions{true, cfg_.gate_scale},
                               double(in.scores.size(0)));
  }

  MoeConfig cfg_;
};

}  // namespace

std::unique_ptr<Balancer> make_ssr_balancer(const MoeConfig& cfg) { return std::make_unique<SsrBalancer>(cfg); }

}  // namespace moe
