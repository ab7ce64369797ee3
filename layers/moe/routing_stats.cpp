// Routing statistics: plain double arithmetic in a fixed order so that logged values are
// reproducible; degenerate cases are mapped to documented finite values.
#include "layers/moe/routing_stats.h"

#include <cmath>

#include "layers/moe/host_ids.h"

namespace moe {

std::vector<double> expert_loads(const Tensor& expert, int64_t num_experts, const char* op, const std::string& who) {
  std::vector<double> load(size_t(num_experts), 0.0);
  with_host_ids(expert, op, [&](const auto* ex) {
    for (int64_t a = 0, A = expert.numel(); a < A; ++a) {
      const int64_t e = ex[a];
      MOE_CHECK(e >= 0 && e < num_experts, op, "strategy '", who, "' chose expert ", e, " outside [0, ", num_experts,
                ")");
      load[size_t(e)] += 1;
    }
  });
  return load;
}

void fill_load_stats(RoutingStats& s) {
  const size_t E = s.load.size();
  double total = 0, mx = 0;
  s.dead_experts = 0;
  for (double l : s.load) {
    total += l;
    mx = std::max(mx, l);
    if (l == 0) ++s.dead_experts;
  }
  s.assignments = int64_t(std::llround(total));
  s.max_vio = s.load_cv = s.load_entropy = 0;
  if (E == 0 || total <= 0) return;
  double mean = total / double(E), var = 0, ent = 0;
  for (double l : s.load) {
    var += (l - mean) * (l - mean);
    if (l > 0) ent -= l / total * std::log(l / total);
  }
  s.max_vio = mx / mean - 1;
  s.load_cv = std::sqrt(var / double(E)) / mean;
  s.load_entropy = ent;
}

void fill_temperature_proxy(RoutingStats& s) {
  s.fit_slope = s.t_eff = s.gamma_proxy = s.fit_r2 = 0;
  s.fit_points = 0;
  s.temperature_valid = false;
  double total = 0;
  for (double l : s.load) total += l;
  if (total <= 0 || s.mean_logit.size() != s.load.size()) return;
  double sv = 0, sy = 0;
  int64_t n = 0;
  for (size_t j = 0; j < s.load.size(); ++j)
    if (s.load[j] > 0) {
      sv += s.mean_logit[j];
      sy += std::log(s.load[j] / total);
      ++n;
    }
  s.fit_points = n;
  if (n < 2) return;
  double mv = sv / double(n), my = sy / double(n), cvv = 0, cvy = 0, cyy = 0;
  for (size_t j = 0; j < s.load.size(); ++j)
    if (s.load[j] > 0) {
      double dv = s.mean_logit[j] - mv, dy = std::log(s.load[j] / total) - my;
      cvv += dv * dv;
      cvy += dv * dy;
      cyy += dy * dy;
    }
  // All V_j equal (to rounding): the fit has no slope to estimate.
  if (cvv <= 1e-12 * std::max(1.0, mv * mv) * double(n)) return;
  double slope = cvy / cvv;
  s.fit_r2 = cyy > 0 ? cvy * cvy / (cvv * cyy) : 1.0;
  if (std::abs(slope) < 1e-12) {  // shares independent of V: T_eff = infinity, reported invalid
    s.fit_r2 = 0;
    return;
  }
  s.fit_slope = slope;
  s.t_eff = 1.0 / slope;
  s.gamma_proxy = s.t_eff - 1.0;
  s.temperature_valid = true;
}

RouterStatSums router_stat_sums(const Tensor& scores, const Tensor& logits, int64_t experts) {
  const char* op = "router_stat_sums";
  MOE_CHECK(scores.dim() == 2 && logits.dim() == 2 && scores.size(0) == logits.size(0) && logits.size(1) >= experts,
            op, "expected scores and logits [T, >= ", experts, "], got ", scores.shape_str(), " and ",
            logits.shape_str());
  if (scores.device() == Device::cuda || logits.device() == Device::cuda) {
    common_device(op, {scores, logits});
    return cuda_backend(op).router_stat_sums(scores, logits, experts);
  }
  const int64_t T = logits.size(0), C = logits.size(1), Cs = scores.size(1);
  const size_t E = size_t(experts);
  std::vector<double> x = logits.to_double_vector(), p = scores.to_double_vector();
  RouterStatSums r;
  r.logit_sum.assign(E, 0.0);
  r.tokens = T;
  for (int64_t t = 0; t < T; ++t) {
    for (size_t j = 0; j < E; ++j) r.logit_sum[j] += x[size_t(t * C) + j];
    // Entropy of the scores renormalized per token (the same thing for softmax scores; for
    // sigmoid scores the distribution they imply).
    const double* row = p.data() + t * Cs;
    double z = 0, h = 0;
    for (int64_t j = 0; j < Cs; ++j) {
      if (std::isnan(row[j]) && r.first_nan < 0) r.first_nan = t * Cs + j;
      z += row[j];
    }
    if (z > 0)
      for (int64_t j = 0; j < Cs; ++j)
        if (row[j] > 0) h -= row[j] / z * std::log(row[j] / z);
    r.entropy_sum += h;
  }
  return r;
}

void RoutingAccumulator::add(const std::vector<double>& l, int64_t drop, const Tensor& scores, const Tensor& logits) {
  add(l, drop, router_stat_sums(scores, logits, int64_t(l.size())));
}

void RoutingAccumulator::add(const std::vector<double>& l, int64_t drop, const RouterStatSums& sums) {
  const char* op = "RoutingAccumulator.add";
  const size_t E = l.size();
  if (load.empty()) {
    load.assign(E, 0.0);
    logit_sum.assign(E, 0.0);
  }
  MOE_CHECK(load.size() == E && sums.logit_sum.size() == E, op, "load has ", E, " experts, the logit sums ",
            sums.logit_sum.size(), ", the accumulator ", load.size());
  for (size_t j = 0; j < E; ++j) load[j] += l[j], logit_sum[j] += sums.logit_sum[j];
  dropped += double(drop);
  entropy_sum += sums.entropy_sum;
  tokens += double(sums.tokens);
}

RoutingStats RoutingAccumulator::finish(std::vector<double> balancer_state) const {
  RoutingStats s;
  s.load = load;
  s.dropped = int64_t(std::llround(dropped));
  s.tokens = int64_t(std::llround(tokens));
  s.balancer_state = std::move(balancer_state);
  fill_load_stats(s);
  s.mean_logit.assign(load.size(), 0.0);
  if (tokens > 0) {
    for (size_t j = 0; j < load.size(); ++j) s.mean_logit[j] = logit_sum[j] / tokens;
    s.router_entropy = entropy_sum / tokens;
  }
  fill_temperature_proxy(s);
  return s;
}

std::vector<double> RoutingAccumulator::pack() const {
  std::vector<double> out(load);
  out.insert(out.end(), logit_sum.begin(), logit_sum.end());
  out.insert(out.end(), {tokens, dropped, entropy_sum});
  return out;
}

RoutingAccumulator RoutingAccumulator::unpack(const std::vector<double>& flat, int64_t num_experts) {
  const size_t E = size_t(num_experts);
  MOE_CHECK(flat.size() == 2 * E + 3, "RoutingAccumulator.unpack", "expected ", 2 * E + 3, " values for ", E,
            " experts, got ", flat.size());
  RoutingAccumulator a;
  a.load.assign(flat.begin(), flat.begin() + long(E));
  a.logit_sum.assign(flat.begin() + long(E), flat.begin() + long(2 * E));
  a.tokens = flat[2 * E];
  a.dropped = flat[2 * E + 1];
  a.entropy_sum = flat[2 * E + 2];
  return a;
}

RoutingStats compute_routing_stats(const std::vector<double>& load, int64_t dropped, const Tensor& scores,
                                   const Tensor& logits, std::vector<double> balancer_state) {
  RoutingAccumulator a;
  a.add(load, dropped, scores, logits);
  return a.finish(std::move(balancer_state));
}

}  // namespace moe
