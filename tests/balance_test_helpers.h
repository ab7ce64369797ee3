// Shared fixtures of the balancing-strategy tests: configs, router outputs from logits, score
// matrices built to be hard (one favoured expert, a collapsed router) and the MaxVio metric.
#pragma once
#include <algorithm>
#include <numeric>
#include <vector>

#include "core/ops.h"
#include "layers/moe/balance/balancer.h"
#include "tests/gradcheck.h"

namespace moe::test {

inline MoeConfig balance_config(const std::string& strategy, int64_t E = 8, int64_t k = 2) {
  MoeConfig cfg;
  cfg.num_experts = E;
  cfg.top_k = k;
  cfg.balance.strategy = strategy;
  return cfg;
}

// Router output of these logits with softmax (or sigmoid) scores, built with recorded ops so
// gradients reach `logits`.
inline RouterOutput router_output(const Tensor& logits, int64_t E, int64_t k, bool training = true,
                                  int64_t seq_len = 0, bool sigmoid_scores = false) {
  RouterOutput in;
  in.logits = logits;
  in.scores = sigmoid_scores ? sigmoid(logits) : softmax(logits, -1);
  in.num_experts = E;
  in.top_k = k;
  in.seq_len = seq_len > 0 ? seq_len : logits.size(0);
  in.training = training;
  return in;
}

// Every token prefers expert 0 by `margin` logits over N(0,1) noise.
inline Tensor favoured_logits(int64_t T, int64_t E, uint64_t seed, double margin = 3.0, DType dt = DType::f32) {
  std::vector<double> x = randn_f64({T, E}, seed, 1.0, false).to_double_vector();
  for (int64_t t = 0; t < T; ++t) x[size_t(t * E)] += margin;
  return Tensor::from_vector<double>(x, {T, E}).to(dt);
}

// A collapsed router: every token has (almost) the same logits, 2.0, 1.5, 1.0, ... down the
// experts, plus noise of scale `noise`.
inline Tensor collapsed_logits(int64_t T, int64_t E, uint64_t seed, double noise = 1e-3, DType dt = DType::f32) {
  std::vector<double> x = randn_f64({T, E}, seed, noise, false).to_double_vector();
  for (int64_t t = 0; t < T; ++t)
    for (int64_t e = 0; e < E; ++e) x[size_t(t * E + e)] += 2.0 - 0.5 * double(e);
  return Tensor::from_vector<double>(x, {T, E}).to(dt);
}

inline std::vector<double> loads_of(const Routing& r, int64_t E) {
  std::vector<double> l(size_t(E), 0.0);
  for (int64_t e : r.expert.to_vector<int64_t>()) l[size_t(e)] += 1;
  return l;
}

// max_i load_i / mean_i load_i - 1
inline double maxvio(const std::vector<double>& loads) {
  double m = std::accumulate(loads.begin(), loads.end(), 0.0) / double(loads.size());
  return *std::max_element(loads.begin(), loads.end()) / m - 1.0;
}

inline std::vector<double> values(const Tensor& t) { return t.contiguous().to_double_vector(); }

}  // namespace moe::test
