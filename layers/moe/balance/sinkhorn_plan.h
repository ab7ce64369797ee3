// The Sinkhorn transport plan of S-BASE and Selective Sinkhorn: Pi = diag(d0) K diag(d1) with
// rows summing to 1/T and columns to 1/E, K = exp((x - max) / xi), computed without overflow.
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "parallel/communicator.h"

namespace moe {

struct SinkhornPlan {
  int64_t tokens = 0, experts = 0;  // this process's rows of the plan
  int64_t global_tokens = 0;        // T of the marginals: rows over every rank of the communicator
  std::vector<double> log_plan;  // [T * E] log Pi_ij (row-major)
  std::vector<double> log_d1;    // [E] log d1_j for K_ij = exp((x_ij - row_max_i) / xi)
  std::vector<double> row_max;   // [T] max_j x_ij (the shift K uses)
  int iterations = 0;            // alternations run (<= max_iters)
  double last_change = 0;        // mean_j |d1_new / d1_old - 1| at the last iteration
  bool log_domain = false;       // true when the plan was computed in the log domain
};

// Alternates d0 = 1 / (T K d1), d1 = 1 / (E K^T d0) from d1 = 1 until the mean relative change
// of d1 is below tol or max_iters alternations ran; the plan ends on a d1 update, so its column
// marginals are exact and its row marginals are within the convergence reached.
// Runs in double: first with the max-shifted kernel (fast), and in the log domain when any
// column of K underflows or a scaling leaves the safe range (or when force_log_domain), so no
// finite logits (e.g. +/-80 with a small xi) produce NaN or infinity.
// With a communicator (balance.scope = "global") the plan is that of the global batch, the
// ranks' rows in rank order: T counts every rank's tokens, each rank keeps its own rows (the
// row scalings d0 stay local) and every column sum is all-reduced inside each iteration (one
// all-reduce of E + 1 doubles; in the log domain one all-gather of 2 E), so d1, the iteration
// count and the fallback decision are identical on every rank and equal the single process's
// up to the order of the floating-point sums.
SinkhornPlan sinkhorn_plan(const Tensor& logits, double temperature, int max_iters, double tol,
                           bool force_log_domain = false, Communicator* comm = nullptr);

}  // namespace moe
