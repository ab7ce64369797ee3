// Expert parallelism inside one MoE layer: who computes which rows of which expert (owners,
// or with LLEP the least-loaded ranks), the exchange of token rows and of lent expert weights
// between the ranks of an EP group as autograd ops, and the MoE phase timers.
#pragma once
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "core/tensor.h"

namespace moe {

class Communicator;

// Least-Loaded Expert Parallelism (arXiv 2601.17111; recipe keys parallel.llep,
// parallel.llep_threshold). When the busiest rank's rows exceed threshold x the mean, rows move
// from overloaded ranks to the least loaded ones (up to cap x mean each), which borrow the
// experts' weights, compute, and return outputs and weight gradients. Results are unchanged.
struct LlepConfig {
  bool enabled = false;
  double threshold = 1.3;
  double cap = 1.1;
};

// Rows [begin, end) of one expert's global row order (the rows of source rank 0 in its sorted
// order, then those of rank 1, ...) computed by `rank`.
struct ExpertChunk {
  int rank = 0;
  int64_t begin = 0, end = 0;
};

// Who computes what, identical on every rank of the EP group.
struct ExpertWork {
  int peers = 1;
  int64_t experts_per_rank = 0;
  std::vector<std::vector<ExpertChunk>> chunks;  // [E] ascending, covering [0, rows of e); owner's first
  std::vector<int64_t> owner_load;               // [P] rows of the experts each rank owns
  std::vector<int64_t> compute_load;             // [P] rows each rank computes
  bool rebalanced = false;                       // LLEP moved work
  int64_t moved_rows = 0;                        // rows computed away from their expert's owner
};

// counts [P * E]: rows of source rank s for expert e at s * E + e. Owner of e: e / (E / P).
// Without LLEP (or below the threshold) every expert's rows stay with its owner. With LLEP,
// repeatedly the busiest rank hands rows to the least loaded one, min(busiest - cap, cap -
// least) rows, taken from the tail of its own chunks of its experts with the most rows left
// (ties: lower expert id), until the busiest is within cap = ceil(cap x mean) rows. Each
// (expert, helper) pair gets one contiguous chunk.
ExpertWork plan_expert_work(const std::vector<int64_t>& counts, int peers, int64_t num_experts, const LlepConfig& llep);

// The row and weight traffic of one forward on this rank. Rows go to the rank computing them
// in contiguous segments of the local sorted rows; they arrive source-major and are regrouped
// by compute slot: this rank's own experts, then the borrowed ones in global id order (each
// slot's rows from every source together, sources in rank order).
struct EpExchangePlan {
  struct Segment {
    int64_t begin = 0, rows = 0;  // local sorted rows [begin, begin + rows)
  };
  int peers = 1;
  int64_t local_experts = 0;
  std::vector<std::vector<Segment>> send_segments;  // [P] per destination, in its slot order
  bool identity_pack = true;                        // the segments are the local rows in order
  std::vector<int64_t> send_rows, recv_rows;        // [P]
  std::vector<int64_t> slot_experts;                // [C] global ids: own experts, then borrowed
  std::vector<int64_t> local_offsets;               // [C + 1] received rows grouped by slot
  std::vector<int64_t> grouped_pos;                 // [R] received row i (source-major) -> grouped row
  std::vector<int64_t> slot_source;                 // [R] its inverse: grouped row j <- received row
  std::vector<int64_t> pack_rows;                   // [N] sent row i <- local sorted row (the segments)
  std::vector<int64_t> unpack_rows;                 // [N] its inverse: local sorted row j <- sent row
  std::vector<std::vector<int64_t>> lend;           // [P] own experts (local index) lent to each peer
  std::vector<int64_t> borrow_count;                // [P] experts borrowed from each peer (slot order)
  ExpertWork work;
  int64_t sent() const;
  int64_t received() const { return local_offsets.back(); }
  int64_t borrowed() const { return int64_t(slot_experts.size()) - local_experts; }
};
using EpExchangePlanPtr = std::shared_ptr<const EpExchangePlan>;

// offsets [E + 1]: the local dispatch plan's per-global-expert row offsets. All-gathers the
// per-expert counts of the EP group and plans (a collective: every rank of ep_group calls it,
// also with zero rows). E must be a multiple of the group size.
EpExchangePlanPtr make_ep_exchange_plan(const std::vector<int64_t>& offsets, Communicator& ep_group,
                                        const LlepConfig& llep = {});

// xs [sent, D] (rows sorted by global expert) -> [received, D] grouped by compute slot.
// Differentiable in xs: the backward returns the gradient rows to their senders (the same
// exchange reversed). A collective forward and backward.
// On either device, in the tensor's dtype (f32 / f64 on the host; bf16 / f32 on the cuda device,
// where rows are packed and regrouped by Backend::select_rows). Device rows go to the
// communicator in place when it takes device buffers (NCCL), else through one host copy each way
// (MPI). bf16 rows travel as 16-bit values (Communicator::alltoallv of uint16_t).
Tensor ep_dispatch(const Tensor& xs, const EpExchangePlanPtr& plan, const std::shared_ptr<Communicator>& ep_group);

// The inverse: yr [received, D] grouped by slot -> [sent, D] back at the ranks that sent the
// rows, in their sorted order. Differentiable in yr (backward: ep_dispatch's exchange).
Tensor ep_return(const Tensor& yr, const EpExchangePlanPtr& plan, const std::shared_ptr<Communicator>& ep_group);

// LLEP weight lending (on w's device): w [El, M, K] (this rank's experts) -> [C, M, K], the weights of every
// compute slot: w's experts, then the borrowed ones received from their owners. Differentiable
// in w: the backward keeps the own slots' gradient and sends each borrowed expert's gradient
// back to its owner, which adds it (a collective forward and backward). The result feeds the
// grouped GEMM, whose backward always produces its gradient, so every rank takes part.
Tensor ep_slot_weights(const Tensor& w, const EpExchangePlanPtr& plan, const std::shared_ptr<Communicator>& ep_group);

// Seconds spent in the MoE layer's phases (forward and backward), summed since the last take:
// dispatch (dispatch plan, permute, the EP count, row and LLEP weight exchange), expert (the
// experts' grouped GEMMs and SwiGLU), combine (the EP return exchange, un-permute and combine).
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
