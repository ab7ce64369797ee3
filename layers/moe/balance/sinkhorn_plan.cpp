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
// out of the safe range), on every rank alike: a rank's bad row scaling travels with the column
// sums (their extra last entry), so all ranks see it in the same iteration.
bool linear_pass(const std::vector<double>& logk, int64_t T, int64_t E, int max_iters, double tol, Communicator* comm,
                 SinkhornPlan& p) {
  std::vector<double> K(logk.size()), d0(static_cast<size_t>(T)), d1(size_t(E), 1.0), d1n(size_t(E) + 1);
  const double Tg = double(p.global_tokens);
  for (size_t i = 0; i < K.size(); ++i) K[i] = std::exp(logk[i]);
  for (int it = 1; it <= max_iters; ++it) {
    for (int64_t i = 0; i < T; ++i) {
      const double* row = &K[size_t(i * E)];
      double r = 0;
      for (int64_t j = 0; j < E; ++j) r += row[j] * d1[size_t(j)];
      d0[size_t(i)] = 1.0 / (Tg * r);
    }
    std::fill(d1n.begin(), d1n.end(), 0.0);
    for (int64_t i = 0; i < T; ++i) {
      const double* row = &K[size_t(i * E)];
      const double w = d0[size_t(i)];
      for (int64_t j = 0; j < E; ++j) d1n[size_t(j)] += row[j] * w;
      if (!(w < kSafe) || !(w > 1.0 / kSafe)) d1n[size_t(E)] = 1.0;
    }
    if (comm) comm->all_reduce_sum(d1n.data(), d1n.size());
    if (d1n[size_t(E)] > 0) return false;
    double change = 0;
    for (int64_t j = 0; j < E; ++j) {
      double c = d1n[size_t(j)];
      if (!(c > 0) || !std::isfinite(c)) return false;
      double v = 1.0 / (double(E) * c);
      if (!(v < kSafe) || !(v > 1.0 / kSafe)) return false;
      change += std::abs(v / d1[size_t(j)] - 1.0);
      d1[size_t(j)] = v;
    }
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

// log sum_i exp(v[i, j]) over the rows of every rank, for each column j of v [T, E]: each rank's
// (max, shifted sum) per column, merged in rank order from one all-gather.
void column_log_sum_exp(const std::vector<double>& v, int64_t T, int64_t E, Communicator* comm,
                        std::vector<double>& out) {
  std::vector<double> ms(size_t(2 * E));
  for (int64_t j = 0; j < E; ++j) {
    double m = -std::numeric_limits<double>::infinity();
    for (int64_t i = 0; i < T; ++i) m = std::max(m, v[size_t(i * E + j)]);
    double s = 0;
    for (int64_t i = 0; i < T; ++i) s += std::exp(v[size_t(i * E + j)] - m);
    ms[size_t(j)] = m;
    ms[size_t(E + j)] = s;
  }
  if (!comm) {
    for (int64_t j = 0; j < E; ++j) out[size_t(j)] = ms[size_t(j)] + std::log(ms[size_t(E + j)]);
    return;
  }
  const std::vector<double> all = comm->all_gather(ms.data(), ms.size());
  const int W = comm->size();
  for (int64_t j = 0; j < E; ++j) {
    double m = -std::numeric_limits<double>::infinity();
    for (int r = 0; r < W; ++r) m = std::max(m, all[size_t(r) * ms.size() + size_t(j)]);
    double s = 0;
    for (int r = 0; r < W; ++r) {
      const double mr = all[size_t(r) * ms.size() + size_t(j)], sr = all[size_t(r) * ms.size() + size_t(E + j)];
      if (sr > 0) s += sr * std::exp(mr - m);
    }
    out[size_t(j)] = m + std::log(s);
  }
}

void log_pass(const std::vector<double>& logk, int64_t T, int64_t E, int max_iters, double tol, Communicator* comm,
              SinkhornPlan& p) {
  std::vector<double> ld0(static_cast<size_t>(T)), ld1(size_t(E), 0.0), tmp(logk.size()), lse(static_cast<size_t>(E));
  const double logT = std::log(double(p.global_tokens)), logE = std::log(double(E));
  for (int it = 1; it <= max_iters; ++it) {
    for (int64_t i = 0; i < T; ++i) {
      for (int64_t j = 0; j < E; ++j) tmp[size_t(i * E + j)] = logk[size_t(i * E + j)] + ld1[size_t(j)];
      ld0[size_t(i)] = -logT - log_sum_exp(&tmp[size_t(i * E)], E, 1);
    }
    for (int64_t i = 0; i < T; ++i)
      for (int64_t j = 0; j < E; ++j) tmp[size_t(i * E + j)] = logk[size_t(i * E + j)] + ld0[size_t(i)];
    column_log_sum_exp(tmp, T, E, comm, lse);
    double change = 0;
    for (int64_t j = 0; j < E; ++j) {
      double v = -logE - lse[size_t(j)];
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

SinkhornPlan sinkhorn_plan(const Tensor& logits, double temperature, int max_iters, double tol, bool force_log_domain,
                           Communicator* comm) {
  MOE_CHECK(logits.dim() == 2, "balance.sinkhorn", "expected [T, E] logits, got ", logits.shape_str());
  MOE_CHECK(temperature > 0, "router.sinkhorn_temperature", "must be > 0, got ", temperature);
  MOE_CHECK(max_iters >= 1, "router.sinkhorn_max_iters", "must be >= 1, got ", max_iters);
  const int64_t T = logits.size(0), E = logits.size(1);
  std::vector<double> x = logits.detach().contiguous().to_double_vector();
  SinkhornPlan p;
  p.tokens = T;
  p.experts = E;
  if (comm && comm->size() == 1) comm = nullptr;
  double total = double(T);
  if (comm) comm->all_reduce_sum(&total, 1);
  p.global_tokens = int64_t(std::llround(total));
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
  if (force_log_domain || !linear_pass(logk, T, E, max_iters, tol, comm, p))
    log_pass(logk, T, E, max_iters, tol, comm, p);
  return p;
}

}  // namespace moe
