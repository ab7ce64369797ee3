// The EP exchanges as autograd ops: token rows to the ranks computing them (Communicator::
// alltoallv), regrouped by compute slot, and back; LLEP's lent weights out and their grads back.
#include "layers/moe/expert_parallel.h"

#include <algorithm>
#include <cstring>

#include "core/autograd.h"
#include "core/dispatch.h"
#include "parallel/communicator.h"

namespace moe {

namespace {

std::vector<int64_t> times_width(const std::vector<int64_t>& rows, int64_t D) {
  std::vector<int64_t> out(rows.size());
  for (size_t p = 0; p < rows.size(); ++p) out[p] = rows[p] * D;
  return out;
}

// Senders' sorted rows -> the computing ranks' slot-major rows.
Tensor exchange_forward(const Tensor& x, const EpExchangePlan& pl, Communicator& comm) {
  const int64_t D = x.size(1), R = pl.received(), N = pl.sent();
  Tensor xc = x.contiguous();
  Tensor recv = Tensor::empty({R, D}, x.dtype()), out = Tensor::empty({R, D}, x.dtype());
  dispatch_float(x.dtype(), "ep_dispatch", [&](auto tag) {
    using T = decltype(tag);
    const T* send = xc.data<T>();
    std::vector<T> packed;
    if (!pl.identity_pack) {  // LLEP: an expert's rows may go to several ranks
      packed.resize(size_t(N * D));
      T* o = packed.data();
      for (const auto& segs : pl.send_segments)
        for (const auto& sg : segs) o = std::copy(send + sg.begin * D, send + (sg.begin + sg.rows) * D, o);
      send = packed.data();
    }
    comm.alltoallv(send, times_width(pl.send_rows, D), recv.data<T>(), times_width(pl.recv_rows, D));
    const T* src = recv.data<T>();
    T* dst = out.data<T>();
#pragma omp parallel for if (R * D > 32768)
    for (int64_t i = 0; i < R; ++i) std::memcpy(dst + pl.grouped_pos[size_t(i)] * D, src + i * D, size_t(D) * sizeof(T));
  });
  return out;
}

// The computing ranks' slot-major rows -> the senders' sorted rows.
Tensor exchange_backward(const Tensor& y, const EpExchangePlan& pl, Communicator& comm) {
  const int64_t D = y.size(1), R = pl.received(), N = pl.sent();
  Tensor yc = y.contiguous();
  Tensor send = Tensor::empty({R, D}, y.dtype()), out = Tensor::empty({N, D}, y.dtype());
  dispatch_float(y.dtype(), "ep_return", [&](auto tag) {
    using T = decltype(tag);
    const T* src = yc.data<T>();
    T* buf = send.data<T>();
#pragma omp parallel for if (R * D > 32768)
    for (int64_t i = 0; i < R; ++i) std::memcpy(buf + i * D, src + pl.grouped_pos[size_t(i)] * D, size_t(D) * sizeof(T));
    if (pl.identity_pack) {
      comm.alltoallv(buf, times_width(pl.recv_rows, D), out.data<T>(), times_width(pl.send_rows, D));
    } else {
      std::vector<T> packed(size_t(N * D));
      comm.alltoallv(buf, times_width(pl.recv_rows, D), packed.data(), times_width(pl.send_rows, D));
      const T* in = packed.data();
      T* o = out.data<T>();
      for (const auto& segs : pl.send_segments)
        for (const auto& sg : segs) {
          std::copy(in, in + sg.rows * D, o + sg.begin * D);
          in += sg.rows * D;
        }
    }
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

Tensor ep_slot_weights(const Tensor& w, const EpExchangePlanPtr& plan, const std::shared_ptr<Communicator>& ep_group) {
  const char* op = "ep_slot_weights";
  MOE_CHECK(w.dim() == 3 && w.size(0) == plan->local_experts, op, "expected w [", plan->local_experts,
            ", M, K] (this rank's experts), got ", w.shape_str());
  const int64_t El = plan->local_experts, MK = w.size(1) * w.size(2), C = int64_t(plan->slot_experts.size());
  const size_t P = size_t(plan->peers);
  std::vector<int64_t> lend_counts(P), borrow_counts(P);
  for (size_t p = 0; p < P; ++p) {
    lend_counts[p] = int64_t(plan->lend[p].size()) * MK;
    borrow_counts[p] = plan->borrow_count[p] * MK;
  }
  Tensor wc = w.contiguous();
  Tensor out = Tensor::empty({C, w.size(1), w.size(2)}, w.dtype());
  dispatch_float(w.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    const T* src = wc.data<T>();
    T* dst = out.data<T>();
    std::copy(src, src + El * MK, dst);
    std::vector<T> send;
    for (size_t p = 0; p < P; ++p)
      for (int64_t li : plan->lend[p]) send.insert(send.end(), src + li * MK, src + (li + 1) * MK);
    ep_group->alltoallv(send.data(), lend_counts, dst + El * MK, borrow_counts);
  });
  if (needs_grad({w}))
    record(op, {out}, [w, plan, ep_group, lend_counts, borrow_counts, El, MK, P](const std::vector<Tensor>& g) {
      Tensor gc = g[0].contiguous();
      Tensor gw = Tensor::empty(w.shape(), w.dtype());
      dispatch_float(w.dtype(), "ep_slot_weights backward", [&](auto tag) {
        using T = decltype(tag);
        const T* src = gc.data<T>();
        T* o = gw.data<T>();
        std::copy(src, src + El * MK, o);
        int64_t lent = 0;
        for (int64_t c : lend_counts) lent += c;
        std::vector<T> back(static_cast<size_t>(lent));
        ep_group->alltoallv(src + El * MK, borrow_counts, back.data(), lend_counts);
        // The borrowers' gradients, added in peer order (a fixed order on every run).
        const T* b = back.data();
        for (size_t p = 0; p < P; ++p)
          for (int64_t li : plan->lend[p]) {
            T* t = o + li * MK;
            for (int64_t k = 0; k < MK; ++k) t[k] += b[k];
            b += MK;
          }
      });
      accumulate_grad(w, gw);
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
