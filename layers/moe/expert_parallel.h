// Expert parallelism inside one MoE layer: the exchange of token rows between the ranks of an
// EP group (each holds E / ep consecutive experts) as autograd ops, and the MoE phase timers.
#pragma once
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "core/tensor.h"

namespace moe {

class Communicator;

// The row traffic of one forward through an EP group of P ranks with El experts each. Rank p
// owns global experts [p El, (p + 1) El), so the locally dispatched rows (sorted by global
// expert) already form one contiguous block per destination. Received rows arrive source-major
// (all of rank 0's rows, grouped by local expert, then rank 1's, ...); the local experts need
// them expert-major (each local expert's rows from every source together, sources in rank order).
struct EpExchangePlan {
  int peers = 1;
  int64_t local_experts = 0;
  std::vector<int64_t> send_rows;      // [P] rows sent to each peer
  std::vector<int64_t> recv_rows;      // [P] rows received from each peer
  std::vector<int64_t> local_offsets;  // [El + 1] received rows grouped by local expert
  std::vector<int64_t> grouped_pos;    // [R] received row i (source-major) -> its expert-major row
  int64_t sent() const;
  int64_t received() const { return local_offsets.back(); }
};
using EpExchangePlanPtr = std::shared_ptr<const EpExchangePlan>;

// offsets [E + 1]: the local dispatch plan's per-global-expert row offsets. Exchanges the
// per-expert counts with the EP group (a collective: every rank of ep_group calls it, also
// with zero rows). E must be a multiple of the group size.
EpExchangePlanPtr make_ep_exchange_plan(const std::vector<int64_t>& offsets, Communicator& ep_group);

// xs [sent, D] (rows sorted by global expert) -> [received, D], this rank's rows grouped by
// local expert (local_offsets). Differentiable in xs: the backward returns the gradient rows to
// their senders (the same exchange reversed). A collective forward and backward.
Tensor ep_dispatch(const Tensor& xs, const EpExchangePlanPtr& plan, const std::shared_ptr<Communicator>& ep_group);

// The inverse: yr [received, D] grouped by local expert -> [sent, D] back at the ranks that
// sent the rows, in their sorted order. Differentiable in yr (backward: ep_dispatch's exchange).
Tensor ep_return(const Tensor& yr, const EpExchangePlanPtr& plan, const std::shared_ptr<Communicator>& ep_group);

// Seconds spent in the MoE layer's phases (forward and backward), summed since the last take:
// dispatch (dispatch plan, permute, the EP count and row exchange), expert (the experts'
// grouped GEMMs and SwiGLU), combine (the EP return exchange, un-permute and gated combine).
struct MoePhaseTimes {
  double dispatch = 0, expert = 0, combine = 0;
  MoePhaseTimes& operator+=(const MoePhaseTimes& o) {
    dispatch += o.dispatch;
    expert += o.expert;
    combine += o.combine;
    return *this;
  }
};

// The clock of one layer's phases. Forward phases are timed directly; backward phases by
// markers placed at the phase boundaries (backward_marker): the tape runs the nodes recorded
// between two markers right after the later marker's backward, so each marker's backward closes
// the phase that ran since the previous one.
class MoePhaseClock {
 public:
  using Clock = std::chrono::steady_clock;
  enum Phase { dispatch, expert, combine };
  void add(Phase p, double seconds);
  void start_backward() { last_ = Clock::now(); }  // gradient reached the layer's output
  void close_backward(Phase p);                    // p's backward ends now; the next one starts
  MoePhaseTimes take();

 private:
  MoePhaseTimes times_;
  Clock::time_point last_;
};

// Identity with a hook: when the gradient reaches the result, calls on_backward and passes the
// gradient to x unchanged (no copy). Returns x itself when no gradient is being recorded.
Tensor backward_marker(const Tensor& x, std::function<void()> on_backward);

}  // namespace moe
