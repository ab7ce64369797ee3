// The EP exchange: per-expert counts, then token rows with Communicator::alltoallv, regrouped
// by local expert; its inverse; both autograd ops whose backward is the other direction.
#include "layers/moe/expert_parallel.h"

#include <algorithm>
#include <cstring>

#include "core/autograd.h"
#include "core/dispatch.h"
#include "parallel/communicator.h"

namespace moe {

int64_t EpExchangePlan::sent() const {
  int64_t n = 0;
  for (int64_t r : send_rows) n += r;
  return n;
}

EpExchangePlanPtr make_ep_exchange_plan(const std::vector<int64_t>& offsets, Communicator& ep_group) {
  const char* op = "make_ep_exchange_plan";
  const int P = ep_group.size();
  const int64_t E = int64_t(offsets.size()) - 1;
  MOE_CHECK(E >= 1 && offsets.front() == 0, op, "expected offsets [E + 1] starting at 0, got ", offsets.size(),
            " entries");
  MOE_CHECK(E % P == 0, op, "num_experts ", E, " is not a multiple of the expert-parallel group size ", P);
  for (int64_t e = 0; e < E; ++e)
    MOE_CHECK(offsets[size_t(e)] <= offsets[size_t(e) + 1], op, "offsets must be non-decreasing (expert ", e, ")");
  const int64_t El = E / P;
  auto plan = std::make_shared<EpExchangePlan>();
  plan->peers = P;
  plan->local_experts = El;
  // Counts travel as doubles (exact below 2^53): El per peer, in both directions.
  std::vector<double> send_counts(static_cast<size_t>(E)), recv_counts(static_cast<size_t>(E));
  for (int64_t e = 0; e < E; ++e) send_counts[size_t(e)] = double(offsets[size_t(e) + 1] - offsets[size_t(e)]);
  std::vector<int64_t> per_peer(size_t(P), El);
  ep_group.alltoallv(send_counts.data(), per_peer, recv_counts.data(), per_peer);

  plan->send_rows.resize(size_t(P));
  plan->recv_rows.assign(size_t(P), 0);
  plan->local_offsets.assign(size_t(El) + 1, 0);
  for (int p = 0; p < P; ++p) {
    plan->send_rows[size_t(p)] = offsets[size_t((p + 1) * El)] - offsets[size_t(p * El)];
    for (int64_t j = 0; j < El; ++j) {
      const int64_t c = int64_t(recv_counts[size_t(p * El + j)]);
      MOE_CHECK(c >= 0, op, "peer ", p, " announced ", c, " rows for local expert ", j);
      plan->recv_rows[size_t(p)] += c;
      plan->local_offsets[size_t(j) + 1] += c;
    }
  }
  for (int64_t j = 0; j < El; ++j) plan->local_offsets[size_t(j) + 1] += plan->local_offsets[size_t(j)];
  plan->grouped_pos.resize(size_t(plan->received()));
  std::vector<int64_t> fill(plan->local_offsets.begin(), plan->local_offsets.end() - 1);
  size_t i = 0;
  for (int p = 0; p < P; ++p)
    for (int64_t j = 0; j < El; ++j)
      for (int64_t c = int64_t(recv_counts[size_t(p * El + j)]); c > 0; --c) plan->grouped_pos[i++] = fill[size_t(j)]++;
  return plan;
}

namespace {

std::vector<int64_t> times_width(const std::vector<int64_t>& rows, int64_t D) {
  std::vector<int64_t> out(rows.size());
  for (size_t p = 0; p < rows.size(); ++p) out[p] = rows[p] * D;
  return out;
}

// Senders' sorted rows -> owners' expert-major rows.
Tensor exchange_forward(const Tensor& x, const EpExchangePlan& pl, Communicator& comm) {
  const int64_t D = x.size(1), R = pl.received();
  Tensor xc = x.contiguous();
  Tensor recv = Tensor::empty({R, D}, x.dtype()), out = Tensor::empty({R, D}, x.dtype());
  dispatch_float(x.dtype(), "ep_dispatch", [&](auto tag) {
    using T = decltype(tag);
    comm.alltoallv(xc.data<T>(), times_width(pl.send_rows, D), recv.data<T>(), times_width(pl.recv_rows, D));
    const T* src = recv.data<T>();
    T* dst = out.data<T>();
#pragma omp parallel for if (R * D > 32768)
    for (int64_t i = 0; i < R; ++i) std::memcpy(dst + pl.grouped_pos[size_t(i)] * D, src + i * D, size_t(D) * sizeof(T));
  });
  return out;
}

// Owners' expert-major rows -> the senders' sorted rows.
Tensor exchange_backward(const Tensor& y, const EpExchangePlan& pl, Communicator& comm) {
  const int64_t D = y.size(1), R = pl.received();
  Tensor yc = y.contiguous();
  Tensor send = Tensor::empty({R, D}, y.dtype()), out = Tensor::empty({pl.sent(), D}, y.dtype());
  dispatch_float(y.dtype(), "ep_return", [&](auto tag) {
    using T = decltype(tag);
    const T* src = yc.data<T>();
    T* buf = send.data<T>();
#pragma omp parallel for if (R * D > 32768)
    for (int64_t i = 0; i < R; ++i) std::memcpy(buf + i * D, src + pl.grouped_pos[size_t(i)] * D, size_t(D) * sizeof(T));
    comm.alltoallv(buf, times_width(pl.recv_rows, D), out.data<T>(), times_width(pl.send_rows, D));
  });
  return out;
}

}  // namespace

Tensor ep_dispatch(const Tensor& xs, const EpExchangePlanPtr& plan, const std::shared_ptr<Communicator>& ep_group) {
  MOE_CHECK(xs.dim() == 2 && xs.size(0) == plan->sent(), "ep_dispatch", "expected xs [", plan->sent(),
            ", D] (the rows sent), got ", xs.shape_str());
  MOE_CHECK(ep_group->size() == plan->peers, "ep_dispatch", "plan for ", plan->peers, " ranks used with a group of ",
            ep_group->size());
  Tensor out = exchange_forward(xs, *plan, *ep_group);
  if (needs_grad({xs}))
    record("ep_dispatch", {out}, [xs, plan, ep_group](const std::vector<Tensor>& g) {
      accumulate_grad(xs, exchange_backward(g[0], *plan, *ep_group));
    });
  return out;
}

Tensor ep_return(const Tensor& yr, const EpExchangePlanPtr& plan, const std::shared_ptr<Communicator>& ep_group) {
  MOE_CHECK(yr.dim() == 2 && yr.size(0) == plan->received(), "ep_return", "expected yr [", plan->received(),
            ", D] (the rows received), got ", yr.shape_str());
  MOE_CHECK(ep_group->size() == plan->peers, "ep_return", "plan for ", plan->peers, " ranks used with a group of ",
            ep_group->size());
  Tensor out = exchange_backward(yr, *plan, *ep_group);
  if (needs_grad({yr}))
    record("ep_return", {out}, [yr, plan, ep_group](const std::vector<Tensor>& g) {
      accumulate_grad(yr, exchange_forward(g[0], *plan, *ep_group));
    });
  return out;
}

void MoePhaseClock::add(Phase p, double seconds) {
  (p == dispatch ? times_.dispatch : p == expert ? times_.expert : times_.combine) += seconds;
}

void MoePhaseClock::close_backward(Phase p) {
  const Clock::time_point now = Clock::now();
  add(p, std::chrono::duration<double>(now - last_).count());
  last_ = now;
}

MoePhaseTimes MoePhaseClock::take() {
  MoePhaseTimes t = times_;
  times_ = MoePhaseTimes{};
  return t;
}

Tensor backward_marker(const Tensor& x, std::function<void()> on_backward) {
  if (!needs_grad({x})) return x;
  Tensor out = x.detach();
  record("backward_marker", {out}, [x, f = std::move(on_backward)](const std::vector<Tensor>& g) {
    f();
    accumulate_grad(x, g[0]);
  });
  return out;
}

}  // namespace moe
