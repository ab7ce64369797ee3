// The EP exchanges as autograd ops: token rows to the ranks computing them (Communicator::
// alltoallv), regrouped by compute slot, and back; LLEP's lent weights out and their grads back.
#include "layers/moe/expert_parallel.h"

#include <climits>
#include <cstring>

#include "core/autograd.h"
#include "core/cpu/elementwise.h"
#include "core/device.h"
#include "parallel/communicator.h"

namespace moe {

namespace {

std::vector<int64_t> times_width(const std::vector<int64_t>& rows, int64_t D) {
  std::vector<int64_t> out(rows.size());
  for (size_t p = 0; p < rows.size(); ++p) out[p] = rows[p] * D;
  return out;
}

// The rows x[index[i]] as a new [m, D] tensor on x's device (there: Backend::select_rows).
Tensor take_rows(const Tensor& x, const std::vector<int64_t>& index, const char* op) {
  const int64_t n = x.size(0), D = x.size(1), m = int64_t(index.size());
  if (x.device() == Device::cuda) {
    MOE_CHECK(n <= INT32_MAX, op, n, " rows exceed the device's int32 row index");
    std::vector<int32_t> i32(index.begin(), index.end());
    return cuda_backend(op).select_rows(x, Tensor::from_vector(i32, {m}).to(Device::cuda));
  }
  Tensor xc = x.contiguous(), out = Tensor::empty({m, D}, x.dtype());
  if (m == 0 || D == 0) return out;
  const size_t row = size_t(D) * dtype_size(x.dtype());
  const char* src = static_cast<const char*>(xc.raw_data());
  char* dst = static_cast<char*>(out.raw_data());
#pragma omp parallel for if (m * D > 32768)
  for (int64_t i = 0; i < m; ++i) std::memcpy(dst + size_t(i) * row, src + size_t(index[size_t(i)]) * row, row);
  return out;
}

// send [sum send_rows, D] -> [sum recv_rows, D]: send_rows[p] rows to peer p, recv_rows[p] from
// it, peers in order (Communicator::alltoallv). Device rows are exchanged in place when comm
// takes device buffers, else staged through host copies.
Tensor exchange_rows(const Tensor& send, const std::vector<int64_t>& send_rows, const std::vector<int64_t>& recv_rows,
                     Communicator& comm, const char* op) {
  const bool device = send.device() == Device::cuda;
  if (device && !comm.takes_device_buffers())
    return exchange_rows(send.to(Device::cpu), send_rows, recv_rows, comm, op).to(Device::cuda);
  int64_t R = 0;
  for (int64_t r : recv_rows) R += r;
  const int64_t D = send.size(1);
  Tensor s = send.contiguous(), recv = Tensor::empty({R, D}, send.dtype(), send.device());
  if (device) cuda_backend(op).synchronize();  // the packing kernels are done before the communicator reads
  const std::vector<int64_t> sc = times_width(send_rows, D), rc = times_width(recv_rows, D);
  auto run = [&](auto tag, auto wire) {
    using T = decltype(tag);
    using W = decltype(wire);  // the communicator's element type
    T* from = device ? s.device_data<T>() : s.data<T>();
    T* to = device ? recv.device_data<T>() : recv.data<T>();
    comm.alltoallv(reinterpret_cast<const W*>(from), sc, reinterpret_cast<W*>(to), rc);
  };
  switch (send.dtype()) {
    case DType::f32: run(float{}, float{}); break;
    case DType::f64: run(double{}, double{}); break;
    case DType::bf16: run(bf16{}, uint16_t{}); break;
    default: MOE_FAIL(op, "rows must be f32, f64 or bf16, got ", dtype_name(send.dtype()));
  }
  return recv;
}

// Senders' sorted rows -> the computing ranks' slot-major rows.
Tensor exchange_forward(const Tensor& x, const EpExchangePlan& pl, Communicator& comm) {
  const char* op = "ep_dispatch";
  Tensor send = pl.identity_pack ? x.detach() : take_rows(x.detach(), pl.pack_rows, op);
  return take_rows(exchange_rows(send, pl.send_rows, pl.recv_rows, comm, op), pl.slot_source, op);
}

// The computing ranks' slot-major rows -> the senders' sorted rows.
Tensor exchange_backward(const Tensor& y, const EpExchangePlan& pl, Communicator& comm) {
  const char* op = "ep_return";
  Tensor back = exchange_rows(take_rows(y.detach(), pl.grouped_pos, op), pl.recv_rows, pl.send_rows, comm, op);
  return pl.identity_pack ? back : take_rows(back, pl.unpack_rows, op);
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
  // Rows of w viewed as [El, M * K]: the lent ones in peer order, counted per peer.
  std::vector<int64_t> lent, lend_counts(P), borrow_counts(P);
  for (size_t p = 0; p < P; ++p) {
    lent.insert(lent.end(), plan->lend[p].begin(), plan->lend[p].end());
    lend_counts[p] = int64_t(plan->lend[p].size());
    borrow_counts[p] = plan->borrow_count[p];
  }
  Tensor wf = w.detach().reshape({El, MK});
  Tensor borrowed = exchange_rows(take_rows(wf, lent, op), lend_counts, borrow_counts, *ep_group, op);
  Tensor out = Tensor::empty({C, MK}, w.dtype(), w.device());
  {
    NoGradGuard ng;
    out.slice(0, 0, El).copy_(wf);
    if (C > El) out.slice(0, El, C).copy_(borrowed);
  }
  out = out.reshape({C, w.size(1), w.size(2)});
  if (needs_grad({w}))
    record(op, {out}, [w, plan, ep_group, lent, lend_counts, borrow_counts, El, MK, C](const std::vector<Tensor>& g) {
      NoGradGuard ng;
      Tensor gc = g[0].detach().reshape({C, MK});
      Tensor gw = gc.slice(0, 0, El).clone();
      Tensor back = exchange_rows(gc.slice(0, El, C), borrow_counts, lend_counts, *ep_group, "ep_slot_weights backward");
      // The borrowers' gradients, added in peer order (a fixed order on every run).
      for (size_t b = 0; b < lent.size(); ++b) {
        Tensor row = gw.slice(0, lent[b], lent[b] + 1);
        row.copy_(add(row, back.slice(0, int64_t(b), int64_t(b) + 1)));
      }
      accumulate_grad(w, gw.reshape(w.shape()));
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
