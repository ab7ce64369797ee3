// BIP / quantile dual iterations: a token pass (nth largest over E per row) and an expert pass
// (nth largest over T per column, columns in parallel, each into its own buffer: deterministic),
// in one process or with the experts' columns of the global batch split over the ranks.
#include "layers/moe/balance/dual_prices.h"

#include <algorithm>

#include "core/device.h"
#include "layers/moe/balance/device_selection.h"
#include "layers/moe/balance/global_batch.h"
#include "layers/moe/balance/strategies.h"
#include "layers/moe/balance/topk_routing.h"

namespace moe {
namespace {

// The m-th largest of v[0..n) for small m (a token's k+1 among E experts): a sorted m-slot
// insertion list, much cheaper than nth_element's setup at n = 16.
double small_nth_largest(const double* v, int64_t n, int64_t m, double* top) {
  int64_t filled = 0;
  for (int64_t j = 0; j < n; ++j) {
    double x = v[j];
    if (filled == m && !(x > top[m - 1])) continue;
    int64_t pos = filled < m ? filled++ : m - 1;
    while (pos > 0 && x > top[pos - 1]) {
      top[pos] = top[pos - 1];
      --pos;
    }
    top[pos] = x;
  }
  return top[m - 1];
}

// p_i = (row_n)-th largest over j of (s_ij - q_j) for the rows of s [T, E] (row-major).
void row_pass(const double* s, int64_t T, int64_t E, const double* qd, int64_t row_n, bool clip, double* p) {
#pragma omp parallel if (T * E >= 65536)  // a team costs more than small batches take
  {
    std::vector<double> buf(static_cast<size_t>(E));
    double top[16];
#pragma omp for
    for (int64_t i = 0; i < T; ++i) {
      for (int64_t j = 0; j < E; ++j) buf[size_t(j)] = s[size_t(i * E + j)] - qd[size_t(j)];
      double v = row_n <= 16 ? small_nth_largest(buf.data(), E, row_n, top) : nth_largest(buf.data(), E, row_n);
      p[size_t(i)] = clip ? std::max(0.0, v) : v;
    }
  }
}

// q_j = (col_n)-th largest over i of (s_ij - p_i) for `ncols` columns stored contiguously (st).
void column_pass(const double* st, int64_t T, int64_t ncols, const double* p, int64_t col_n, bool clip, double* q) {
#pragma omp parallel if (T * ncols >= 65536)
  {
    std::vector<double> buf(static_cast<size_t>(T));
#pragma omp for
    for (int64_t j = 0; j < ncols; ++j) {
      const double* col = &st[size_t(j * T)];
      for (int64_t i = 0; i < T; ++i) buf[size_t(i)] = col[i] - p[size_t(i)];
      double v = nth_largest(buf.data(), T, col_n);
      q[size_t(j)] = clip ? std::max(0.0, v) : v;
    }
  }
}

}  // namespace

int64_t balanced_capacity(int64_t tokens, int64_t experts, int64_t k) { return (k * tokens + experts - 1) / experts; }

void dual_price_iterations(const Tensor& scores, int64_t k, int64_t cap, int iters, bool clip, std::vector<float>& q) {
  MOE_CHECK(scores.dim() == 2 && int64_t(q.size()) == scores.size(1), "balance.dual_prices", "scores ",
            scores.shape_str(), " and ", q.size(), " prices");
  dual_price_iterations(scores.detach().contiguous().to_double_vector(), scores.size(0), scores.size(1), k, cap, iters,
                        clip, q);
}

void dual_price_iterations(const std::vector<double>& s, int64_t T, int64_t E, int64_t k, int64_t cap, int iters,
                           bool clip, std::vector<float>& q) {
  MOE_CHECK(int64_t(s.size()) == T * E && int64_t(q.size()) == E, "balance.dual_prices", s.size(), " scores for [",
            T, ", ", E, "] and ", q.size(), " prices");
  std::vector<double> qd(q.begin(), q.end()), p(static_cast<size_t>(T));
  std::vector<double> st(size_t(T * E));  // s transposed: a column per expert, contiguous
  for (int64_t i = 0; i < T; ++i)
    for (int64_t j = 0; j < E; ++j) st[size_t(j * T + i)] = s[size_t(i * E + j)];
  const int64_t row_n = std::min(k + 1, E), col_n = std::min(cap + 1, T);
  for (int it = 0; it < iters; ++it) {
    row_pass(s.data(), T, E, qd.data(), row_n, clip, p.data());
    column_pass(st.data(), T, E, p.data(), col_n, clip, qd.data());
  }
  for (int64_t j = 0; j < E; ++j) q[size_t(j)] = float(qd[size_t(j)]);
}

void batch_dual_price_iterations(Communicator* comm, const Tensor& scores, int64_t k, int iters, bool clip,
                                 std::vector<float>& q, const char* where) {
  MOE_CHECK(scores.dim() == 2 && int64_t(q.size()) == scores.size(1), where, "scores ", scores.shape_str(), " and ",
            q.size(), " prices");
  const int64_t T = scores.size(0), E = scores.size(1);
  std::vector<double> s = scores.detach().contiguous().to_double_vector();
  if (comm == nullptr || comm->size() == 1) {
    dual_price_iterations(s, T, E, k, balanced_capacity(T, E, k), iters, clip, q);
    return;
  }
  ColumnShare sh = share_columns(*comm, s, T, E, where);
  const int64_t Tg = sh.total, own = sh.col_end - sh.col_begin;
  const int64_t row_n = std::min(k + 1, E), col_n = std::min(balanced_capacity(Tg, E, k) + 1, Tg);
  std::vector<int64_t> owned_counts(static_cast<size_t>(comm->size()));
  for (int r = 0; r < comm->size(); ++r) {
    auto [b, e] = owned_columns(E, r, comm->size());
    owned_counts[size_t(r)] = e - b;
  }
  std::vector<double> qd(q.begin(), q.end()), p(static_cast<size_t>(T)), q_own(static_cast<size_t>(own));
  for (int it = 0; it < iters; ++it) {
    row_pass(s.data(), T, E, qd.data(), row_n, clip, p.data());
    const std::vector<double> p_all = all_gather_varying(*comm, p.data(), sh.rows);
    column_pass(sh.columns.data(), Tg, own, p_all.data(), col_n, clip, q_own.data());
    qd = all_gather_varying(*comm, q_own.data(), owned_counts);
  }
  for (int64_t j = 0; j < E; ++j) q[size_t(j)] = float(qd[size_t(j)]);
}

Tensor device_dual_price_iterations(const Tensor& scores, int64_t k, int iters, bool clip,
                                    const std::vector<float>& q, const char* where) {
  MOE_CHECK(scores.dim() == 2 && int64_t(q.size()) == scores.size(1), where, "scores ", scores.shape_str(), " and ",
            q.size(), " prices");
  const int64_t T = scores.size(0), E = scores.size(1);
  Tensor qd = Tensor::from_vector<float>(q, {E}).to(Device::cuda);
  cuda_backend(where).dual_price_iterations(scores, qd, k, balanced_capacity(T, E, k), iters, clip);
  return qd;
}

Routing device_price_routing(const Tensor& scores, const std::vector<float>& prices, const MoeConfig& cfg) {
  std::vector<float> bias(prices.size());
  for (size_t j = 0; j < prices.size(); ++j) bias[j] = -prices[j];  // s + (-q) == s - q exactly in fp32
  return device_topk_routing(scores, bias, cfg.top_k, scores, token_choice_gates(cfg));
}

}  // namespace moe
