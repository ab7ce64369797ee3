// Strategy "aux_loss" (Switch Transformer / GShard): plain top-k routing plus
// alpha * E * sum_i f_i P_i, in three variants: micro_batch, per_sequence (DeepSeek), global.
#include <numeric>

#include "core/cpu/elementwise.h"
#include "layers/moe/balance/aux_math.h"
#include "layers/moe/balance/device_selection.h"
#include "layers/moe/balance/strategies.h"
#include "parallel/communicator.h"

namespace moe {
namespace {

// Variant "global": f_i must come from the loads of the whole global batch (every micro-batch
// of the optimizer step on every data-parallel rank). Loads are only known as micro-batches are
// routed, so f_i at a micro-batch uses the loads accumulated over this step's micro-batches so
// far (this one included), summed over the data-parallel ranks (an all-reduce of E values over
// data_parallel_communicator(), whatever balance.scope says). P_i stays the local
// micro-batch mean (it carries the gradient). A single process with one micro-batch per step
// therefore computes exactly the micro_batch loss; with g accumulation micro-batches, micro-batch
// m uses the loads of micro-batches 1..m. update() (once per optimizer step) clears the sums.
// Variant "micro_batch" with balance.scope = "global" (default) under data parallelism: f_i from
// the loads of the global micro-batch (an all-reduce of E values), P_i the local mean. The
// trainer averages the ranks' gradients and logged values, and the mean over ranks of
// f_i P_i(rank) is f_i P_i(global batch): exactly the single process's loss on the concatenated
// micro-batch. scope = "local": f_i and P_i of the rank's own tokens.
class AuxLossBalancer final : public Balancer {
 public:
  explicit AuxLossBalancer(const MoeConfig& cfg)
      : cfg_(cfg), accumulated_(size_t(cfg.num_experts), 0.0) {}
  std::string name() const override { return "aux_loss"; }

  Routing select(const RouterOutput& in, Philox&) override {
    check_router_output(in, cfg_.num_experts, "balance.aux_loss");
    if (on_device(in)) return device_topk_routing(in.scores, {}, cfg_.top_k, in.scores, token_choice_gates(cfg_));
    return build_routing(in.scores, select_topk(in.scores, cfg_.top_k, "balance.aux_loss"),
                         token_choice_gates(cfg_));
  }

  // micro_batch (when its batch is this process's own) and per_sequence on the device (the
  // aux_math products take device probabilities); global (loads accumulated over the step's micro-batches) on the host.
  bool routes_on_device() const override {
    const std::string& variant = cfg_.balance.aux_variant;
    return variant == "per_sequence" ||
           (variant == "micro_batch" && batch_communicator(cfg_.balance.scope) == nullptr);
  }

  std::vector<ExtraLoss> extra_losses(const RouterOutput& in, const Routing& r) override {
    const int64_t E = cfg_.num_experts, T = in.scores.size(0);
    Tensor probs = aux_probabilities(in.scores, cfg_.score_function == "sigmoid");
    Tensor loss;
    const std::string& variant = cfg_.balance.aux_variant;
    if (variant == "per_sequence") {
      const int64_t S = in.seq_len;
      MOE_CHECK(S >= 1 && T % S == 0, "router.aux_variant", "per_sequence needs T (", T,
                ") to be a multiple of seq_len (", S, ")");
      std::vector<double> seq_loads(size_t((T / S) * E), 0.0);
      Tensor tok = r.token.contiguous(), ex = r.expert.contiguous();
      for (int64_t a = 0; a < tok.numel(); ++a)
        seq_loads[size_t((tok.data<int64_t>()[a] / S) * E + ex.data<int64_t>()[a])] += 1.0;
      loss = per_sequence_aux(probs, S, seq_loads, double(cfg_.top_k * S));
    } else {
      std::vector<double> loads = routing_loads(r, E);
      if (variant == "micro_batch")
        if (Communicator* comm = batch_communicator(cfg_.balance.scope)) comm->all_reduce_sum(loads);
      if (variant == "global" && in.training) {
        for (int64_t i = 0; i < E; ++i) accumulated_[size_t(i)] += loads[size_t(i)];
        loads = accumulated_;
        if (Communicator* comm = data_parallel_communicator()) comm->all_reduce_sum(loads);
      }
      double total = std::accumulate(loads.begin(), loads.end(), 0.0);
      loss = switch_aux(probs, loads, total);
    }
    return {extra_loss("aux", loss, cfg_.balance.aux_alpha)};
  }

  void update(const std::vector<double>&) override { std::fill(accumulated_.begin(), accumulated_.end(), 0.0); }

  std::map<std::string, std::vector<double>> state() const override {
    if (cfg_.balance.aux_variant != "global") return {};
    return {{"global_load_accumulator", accumulated_}};
  }
  void load_state(const std::map<std::string, std::vector<double>>& s) override {
    if (cfg_.balance.aux_variant != "global") return;
    accumulated_ = state_entry(s, "global_load_accumulator", size_t(cfg_.num_experts), "aux_loss");
  }

 private:
  MoeConfig cfg_;
  std::vector<double> accumulated_;
};

}  // namespace

std::unique_ptr<Balancer> make_aux_loss_balancer(const MoeConfig& cfg) {
  return std::make_unique<AuxLossBalancer>(cfg);
}

}  // namespace moe
