// Per-step routing statistics of one MoE layer, ready for metrics.jsonl / routing.h5:
// loads, drops, MaxVio, load CV and entropy, dead experts, router entropy, balancer state, and
// the congestion-temperature proxy of shared BALANCING.md.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/device.h"
#include "core/tensor.h"

namespace moe {

struct RoutingStats {
  std::vector<double> load;            // [E] assignments per expert as selected (before capacity drops)
  int64_t tokens = 0;                  // T of the batch the stats describe
  int64_t assignments = 0;             // sum of load
  int64_t dropped = 0;                 // assignments removed by capacity
  double max_vio = 0;                  // max_i load_i / mean load - 1 (0 when there is no load)
  double load_cv = 0;                  // population std / mean of load (0 when there is no load)
  double load_entropy = 0;             // -sum p log p of load shares, nats (max log E)
  int64_t dead_experts = 0;            // experts with load 0
  double router_entropy = 0;           // mean over tokens of -sum_j s log s (scores renormalized per token)
  std::vector<double> balancer_state;  // bias / q / beta; empty when the strategy has none
  // Congestion-temperature proxy: least squares log(share_j) = a + slope * V_j over experts
  // with load > 0, V_j = mean logit of expert j over the batch; T_eff = 1 / slope.
  // Degenerate fits (fewer than 2 loaded experts, all V_j equal, or a slope of 0 meaning
  // T_eff = infinity) set temperature_valid = false, slope = 0, t_eff = gamma_proxy = 0 and
  // fit_r2 = 0: never NaN or inf. A negative slope is valid (loads anti-correlated with logits,
  // e.g. under a strong balancing bias) and gives a negative T_eff.
  std::vector<double> mean_logit;  // V_j [E]
  double fit_slope = 0, t_eff = 0, gamma_proxy = 0, fit_r2 = 0;
  int64_t fit_points = 0;
  bool temperature_valid = false;
};

// Sums over the forwards of one optimizer step (micro-batches, and data-parallel ranks after an
// all-reduce of pack()), from which the step's statistics are computed: loads and drops add,
// V_j and router entropy are token-weighted means over everything added.
struct RoutingAccumulator {
  std::vector<double> load;       // [E]
  std::vector<double> logit_sum;  // [E] sum over tokens of the logit of expert j
  double tokens = 0, dropped = 0, entropy_sum = 0;

  // load [E] as selected; scores and logits [T, E_r] (E_r >= E; only E logit columns summed).
  void add(const std::vector<double>& load, int64_t dropped, const Tensor& scores, const Tensor& logits);
  // The same from the batch's sums (router_stat_sums below; E = load.size()).
  void add(const std::vector<double>& load, int64_t dropped, const RouterStatSums& sums);
  RoutingStats finish(std::vector<double> balancer_state) const;
  bool empty() const { return tokens == 0; }
  // Flat [load (E), logit_sum (E), tokens, dropped, entropy_sum] for an element-wise all-reduce.
  std::vector<double> pack() const;
  static RoutingAccumulator unpack(const std::vector<double>& flat, int64_t num_experts);
};

// The sums add() needs from scores [T, Cs] and logits [T, >= experts] (RouterStatSums, core/device.h):
// on the host, or on the cuda device (where they are summed there and only E + 2 numbers come down).
RouterStatSums router_stat_sums(const Tensor& scores, const Tensor& logits, int64_t experts);

// Assignments per expert, load[e] = #{a : expert[a] == e}, from expert [A] (i32 or i64, either
// device: a device tensor is copied down); an id outside [0, E) fails naming `op` and the strategy
// `who` chose it (the selection's contract).
std::vector<double> expert_loads(const Tensor& expert, int64_t num_experts, const char* op, const std::string& who = "");

// Load-only statistics (MaxVio, CV, entropy, dead) into s from s.load.
void fill_load_stats(RoutingStats& s);

// The temperature proxy from loads and mean logits (fills the fit fields of s).
void fill_temperature_proxy(RoutingStats& s);

// Everything from one forward: loads [E] as selected, scores / logits [T, E_r] (only the first
// E logit columns enter V_j), the dropped count and the balancer's state vector.
RoutingStats compute_routing_stats(const std::vector<double>& load, int64_t dropped, const Tensor& scores,
                                   const Tensor& logits, std::vector<double> balancer_state);

}  // namespace moe
