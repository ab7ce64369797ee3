// Sinkhorn-Knopp scaling for routing: a linear-domain pass in double (two matrix-vector products
// per iteration) with a log-domain fallback for kernels that underflow.
#include "layers/moe/balance/sinkhorn_plan.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/dispatch.h"
#include "core/error.h"

namespace moe {
namespace {

constexpr double kSafe = 1e150;  // scalings beyond this leave too little headroom in double

double log_sum_exp(const double* v, int64_t n, int64_t stride) {
  double m = -std::numeric_limits<double>::infinity();
  for (int64_t i = 0; i < n; ++i) m = std::max(m, v[i * stride]);
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += std::exp(v[i * stride] - m);
  return m + std::log(s);
}

// Linear domain; false when it must fall back (a column of K underflowed or a scaling grew
// out of the safe range).
bool linear_pass(const std::vector<double>& logk, int64_t T, int64_t E, int max_iters, double tol, SinkhornPlan& p) {
  std::vector<double> K(logk.size()), d0(static_cast<size_t>(T)), d1(size_t(E), 1.0), d1n(static_cast<size_t>(E));
  for (size_t i = 0; i < K.size(); ++i) K[i] = std::exp(logk[i]);
  for (int it = 1; it <= max_iters; ++it) {
    for (int64_t i = 0; i < T; ++i) {
      const double* row = &K[size_t(i * E)];
      double r = 0;
      for (int64_t j = 0; j < E; ++j) r += row[j] * d1[size_t(j)];
      d0[size_t(i)] = 1.0 / (double(T) * r);
    }
    std::fill(d1n.begin(), d1n.end(), 0.0);
    for (int64_t i = 0; i < T; ++i) {
      const double* row = &K[size_t(i * E)];
      const double w = d0[size_t(i)];
      for (int64_t j = 0; j < E; ++j) d1n[size_t(j)] += row[j] * w;
    }
    double change = 0;
    for (int64_t j = 0; j < E; ++j) {
      double c = d1n[size_t(j)];
      if (!(c > 0) || !std::isfinite(c)) return false;
      double v = 1.0 / (double(E) * c);
      if (!(v < kSafe) || !(v > 1.0 / kSafe)) return false;
      change += std::abs(v / d1[size_t(j)] - 1.0);
      d1[size_t(j)] = v;
    }
    for (int64_t i = 0; i < T; ++i)
      if (!(d0[size_t(i)] < kSafe) || !(d0[size_t(i)] > 1.0 / kSafe)) return false;
    p.iterations = it;
    p.last_change = change / double(E);
    if (p.last_change < tol) break;
  }
  p.log_domain = false;
  for (int64_t j = 0; j < E; ++j) p.log_d1[size_t(j)] = std::log(d1[size_t(j)]);
  for (int64_t i = 0; i < T; ++i) {
    double ld0 = std::log(d0[size_t(i)]);
    for (int64_t j = 0; j < E; ++j) p.log_plan[size_t(i * E + j)] = logk[size_t(i * E + j)] + ld0 + p.log_d1[size_t(j)];
  }
  return true;
}

void log_pass(const std::vector<double>& logk, int64_t T, int64_t E, int max_iters, double tol, SinkhornPlan& p) {
  std::vector<double> ld0(static_cast<size_t>(T)), ld1(size_t(E), 0.0), tmp(logk.size());
  const double logT = std::log(double(T)), logE = std::log(double(E));
  for (int it = 1; it <= max_iters; ++it) {
    for (int64_t i = 0; i < T; ++i) {
      for (int64_t j = 0; j < E; ++j) tmp[size_t(i * E + j)] = logk[size_t(i * E + j)] + ld1[size_t(j)];
      ld0[size_t(i)] = -logT - log_sum_exp(&tmp[size_t(i * E)], E, 1);
    }
    for (int64_t i = 0; i < T; ++i)
      for (int64_t j = 0; j < E; ++j) tmp[size_t(i * E + j)] = logk[size_t(i * E + j)] + ld0[size_t(i)];
    double change = 0;
    for (int64_t j = 0; j < E; ++j) {
      double v = -logE - log_sum_exp(&tmp[size_t(j)], T, E);
      change += std::abs(std::expm1(v - ld1[size_t(j)]));
      ld1[size_t(j)] = v;
    }
    p.iterations = it;
    p.last_change = change / double(E);
    if (p.last_change < tol) break;
  }
  p.log_domain = true;
  p.log_d1 = ld1;
  for (int64_t i = 0; i < T; ++i)
    for (int64_t j = 0; j < E; ++j)
      p.log_plan[size_t(i * E + j)] = logk[size_t(i * E + j)] + ld0[size_t(i)] + ld1[size_t(j)];
}

}  // namespace

SinkhornPlan sinkhorn_plan(const Tensor& logits, double temperature, int max_iters, double tol, bool force_log_domain) {
  MOE_CHECK(logits.dim() == 2, "balance.sinkhorn", "expected [T, E] logits, got ", logits.shape_str());
  MOE_CHECK(temperature > 0, "router.sinkhorn_temperature", "must be > 0, got ", temperature);
  MOE_CHECK(max_iters >= 1, "router.sinkhorn_max_iters", "must be >= 1, got ", max_iters);
  const int64_t T = logits.size(0), E = logits.size(1);
  std::vector<double> x = logits.detach().contiguous().to_double_vector();
  SinkhornPlan p;
  p.tokens = T;
  p.experts = E;
  p.log_plan.resize(size_t(T * E));
  p.log_d1.resize(static_cast<size_t>(E));
  p.row_max.resize(static_cast<size_t>(T));
  std::vector<double> logk(size_t(T * E));
  for (int64_t i = 0; i < T; ++i) {
    double m = -std::numeric_limits<double>::infinity();
    for (int64_t j = 0; j < E; ++j) {
      double v = x[size_t(i * E + j)];
      MOE_CHECK(std::isfinite(v), "balance.sinkhorn", "router logit is not finite (token ", i, ", expert ", j, ")");
      m = std::max(m, v);
    }
    p.row_max[size_t(i)] = m;
    for (int64_t j = 0; j < E; ++j) logk[size_t(i * E + j)] = (x[size_t(i * E + j)] - m) / temperature;
  }
  if (force_log_domain || !linear_pass(logk, T, E, max_iters, tol, p)) log_pass(logk, T, E, max_iters, tol, p);
  return p;
}

}  // namespace moe
