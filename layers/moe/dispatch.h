// Local token dispatch: a stable counting sort of the kept assignments into contiguous
// per-expert segments, the differentiable permute of token rows, and the un-permute + combine.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "core/tensor.h"

namespace moe {

// Where every kept assignment goes. Sorted position p holds assignment order[p]; the rows of
// expert e are [offsets[e], offsets[e+1]). Within an expert, assignments keep their list order
// (stable). The token-major CSR (token_offsets / token_slots) lists each token's sorted
// positions in list order, so the combine and the permute backward sum in a fixed order.
struct DispatchPlan {
  int64_t num_tokens = 0, num_experts = 0, num_assignments = 0;  // A: all assignments, kept or not
  std::vector<int64_t> offsets;                                  // [E + 1]
  std::vector<int64_t> order;                                    // [A_kept] assignment index at each sorted position
  std::vector<int64_t> token;                                    // [A_kept] token at each sorted position
  std::vector<int64_t> token_offsets;                            // [T + 1]
  std::vector<int64_t> token_slots;                              // [A_kept] sorted positions grouped by token
  int64_t kept() const { return int64_t(order.size()); }
};
using DispatchPlanPtr = std::shared_ptr<const DispatchPlan>;

// token, expert: [A] i32/i64 assignment lists; kept: ascending indices into them (from
// apply_capacity); O(A + E + T), no comparison sort.
DispatchPlanPtr make_dispatch_plan(const Tensor& token, const Tensor& expert, const std::vector<int64_t>& kept,
                                   int64_t num_tokens, int64_t num_experts);

// x [T, D] -> [A_kept, D], row p = x[plan.token[p]]. Backward sums rows back per token.
Tensor permute_tokens(const Tensor& x, const DispatchPlanPtr& plan);

// y [A_kept, D] (sorted order), gate [A] (per assignment, dropped ones included) ->
// out [T, D], out[t] = sum over t's kept assignments a of gate[a] * y[pos(a)]; tokens with no
// kept assignment get zeros. Differentiable in y and gate (dropped gates get zero grad).
Tensor unpermute_combine(const Tensor& y, const Tensor& gate, const DispatchPlanPtr& plan);

}  // namespace moe
