// The narrow interface every balancing strategy implements (one file per strategy in this
// folder; math in shared BALANCING.md). A strategy turns router scores into a list of
// (token, expert, gate) assignments, may add loss terms, and may keep state across steps.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/rng.h"
#include "core/tensor.h"
#include "layers/extra_loss.h"
#include "layers/model_config.h"

namespace moe {

class Communicator;  // parallel/communicator.h

// What the router hands to the strategy for one micro-batch of T tokens.
struct RouterOutput {
  Tensor logits;        // [T, E_r] router logits (f32, or f64 in gradient checks), differentiable
  Tensor scores;        // [T, E_r] softmax or sigmoid of logits, differentiable
  int64_t num_experts;  // E: real experts (E_r = E + null experts where the strategy adds them)
  int64_t top_k;
  int64_t seq_len;      // tokens per sequence (T = batch * seq_len), for per-sequence variants
  bool training;
};

// Assignments of tokens to real experts. Token-choice strategies list them token-major
// (token 0's choices in rank order, then token 1's, ...), which the position drop policy uses.
struct Routing {
  Tensor token;   // [A] i64, in [0, T)
  Tensor expert;  // [A] i64, in [0, E)
  Tensor gate;    // [A] differentiable combine weight (dtype of the scores): already renormalized
                  // where the strategy and cfg.renormalize_gates say so, and times cfg.gate_scale
  Tensor score;   // [A] the value the assignment was selected by (drop-by-score uses it), no grad
};

class Balancer {
 public:
  virtual ~Balancer() = default;
  virtual std::string name() const = 0;
  // Number of router outputs for E real experts (null experts add to it).
  virtual int64_t router_outputs(int64_t num_experts) const { return num_experts; }
  // Chooses assignments. May read (and, for strategies that update on the current batch such
  // as BIP in paper order, change) the state. `rng` is this layer's stream of the run's RNG.
  virtual Routing select(const RouterOutput& in, Philox& rng) = 0;
  // Whether select() and extra_losses() take, right now, a RouterOutput on the cuda device
  // (MoeLayer then runs the router there: Router::forward_on_device). With one, logits and
  // scores are fp32 [T, E_r] device tensors recorded by the device autograd, and the strategy
  // returns token, expert (i64) and score (f32) on the host and the gate [A] fp32 on the device,
  // differentiable into the router; its losses are host 0-dim tensors (extra_loss() in
  // device_selection.h). The decisions must be the host path's (same rules, fp32 math).
  // Read at each forward: a strategy whose batch spans data-parallel ranks says no.
  virtual bool routes_on_device() const { return false; }
  // Loss terms of this strategy (differentiable through in.scores / in.logits).
  virtual std::vector<ExtraLoss> extra_losses(const RouterOutput& in, const Routing& r) { return {}; }
  // Called once per optimizer step, in training only, with the loads [E] of the global batch
  // (all micro-batches, all data-parallel ranks) as selected (before capacity drops).
  virtual void update(const std::vector<double>& global_loads) {}
  // The per-expert state vector that routing.h5 logs (bias, q, beta); empty when none.
  virtual std::vector<double> state_vector() const { return {}; }
  // Everything needed to resume bit-exactly; restored by load_state.
  virtual std::map<std::string, std::vector<double>> state() const { return {}; }
  virtual void load_state(const std::map<std::string, std::vector<double>>& s) {}

  // The data-parallel group: its ranks' micro-batches together form the batch that is balanced
  // when balance.scope = "global", and aux_loss "global" sums its loads over it whatever the
  // scope. select() of bip, quantile, sinkhorn, ssr, expert_choice (the
  // strategies whose routing of a token depends on the other tokens of its batch) and
  // extra_losses() of aux_loss micro_batch and null_experts (f_i from the batch's loads) then
  // call collectives of this communicator, so every rank must run every forward, training and
  // eval, in the same order. Default: none, which is the single-process computation; so is a
  // communicator of one rank, or scope = "local".
  void set_communicator(std::shared_ptr<Communicator> comm) { comm_ = std::move(comm); }

 protected:
  // The data-parallel communicator, or nullptr in a world of one (or without one).
  Communicator* data_parallel_communicator() const;
  // The communicator select() must use for the batch of scope `scope`, or nullptr when the
  // batch is this process's own (scope "local", no communicator, or a world of one).
  Communicator* batch_communicator(const std::string& scope) const;

 private:
  std::shared_ptr<Communicator> comm_;
};

// Builds the strategy named cfg.balance.strategy; unknown names and invalid settings throw
// moe::Error naming the setting (e.g. "router.balance: unknown strategy 'foo' (expected ...)").
std::unique_ptr<Balancer> make_balancer(const MoeConfig& cfg);

}  // namespace moe
