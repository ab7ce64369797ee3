// Who computes which expert rows under expert parallelism (owners; LLEP's moves to the least
// loaded ranks), and this rank's row and weight traffic derived from it (expert_parallel.h).
#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "layers/moe/expert_parallel.h"
#include "parallel/communicator.h"

namespace moe {

ExpertWork plan_expert_work(const std::vector<int64_t>& counts, int peers, int64_t num_experts, const LlepConfig& llep) {
  const char* op = "plan_expert_work";
  const int P = peers;
  const int64_t E = num_experts;
  MOE_CHECK(P >= 1 && E >= 1 && E % P == 0, op, "num_experts ", E, " is not a multiple of the expert-parallel group size ",
            P);
  MOE_CHECK(int64_t(counts.size()) == int64_t(P) * E, op, "expected ", P, " x ", E, " counts, got ", counts.size());
  const int64_t El = E / P;
  ExpertWork w;
  w.peers = P;
  w.experts_per_rank = El;
  std::vector<int64_t> n(size_t(E), 0);
  for (int s = 0; s < P; ++s)
    for (int64_t e = 0; e < E; ++e) {
      const int64_t c = counts[size_t(s * E + e)];
      MOE_CHECK(c >= 0, op, "rank ", s, " announced ", c, " rows for expert ", e);
      n[size_t(e)] += c;
    }
  w.owner_load.assign(size_t(P), 0);
  for (int64_t e = 0; e < E; ++e) w.owner_load[size_t(e / El)] += n[size_t(e)];
  w.compute_load = w.owner_load;
  std::vector<int64_t> left = n;                       // rows of e still with its owner: [0, left[e])
  std::vector<std::vector<ExpertChunk>> lent(static_cast<size_t>(E));  // helpers' chunks, each before the previous

  int64_t total = 0, busiest = 0;
  for (int64_t l : w.owner_load) total += l, busiest = std::max(busiest, l);
  const double mean = double(total) / double(P);
  if (llep.enabled && total > 0 && double(busiest) > llep.threshold * mean) {
    const int64_t cap = std::max<int64_t>(1, int64_t(std::ceil(llep.cap * mean)));
    auto& load = w.compute_load;
    // Each round fills the helper to cap or brings the donor down to cap, so 2P rounds suffice.
    for (int round = 0; round < 2 * P + 2; ++round) {
      const int o = int(std::max_element(load.begin(), load.end()) - load.begin());
      const int h = int(std::min_element(load.begin(), load.end()) - load.begin());
      int64_t amount = std::min(load[size_t(o)] - cap, cap - load[size_t(h)]);
      if (o == h || amount <= 0) break;
      while (amount > 0) {
        int64_t best = -1;  // the donor's expert with the most rows left (ties: lower id)
        for (int64_t e = int64_t(o) * El; e < int64_t(o + 1) * El; ++e)
          if (left[size_t(e)] > 0 && (best < 0 || left[size_t(e)] > left[size_t(best)])) best = e;
        if (best < 0) break;
        const int64_t m = std::min(amount, left[size_t(best)]);
        lent[size_t(best)].push_back(ExpertChunk{h, left[size_t(best)] - m, left[size_t(best)]});
        left[size_t(best)] -= m;
        load[size_t(o)] -= m;
        load[size_t(h)] += m;
        amount -= m;
        w.moved_rows += m;
      }
    }
  }
  w.rebalanced = w.moved_rows > 0;
  w.chunks.resize(size_t(E));
  for (int64_t e = 0; e < E; ++e) {
    auto& c = w.chunks[size_t(e)];
    if (left[size_t(e)] > 0 || lent[size_t(e)].empty()) c.push_back(ExpertChunk{int(e / El), 0, left[size_t(e)]});
    for (auto it = lent[size_t(e)].rbegin(); it != lent[size_t(e)].rend(); ++it) c.push_back(*it);
  }
  return w;
}

namespace {

const ExpertChunk* chunk_of(const ExpertWork& w, int64_t e, int rank) {
  for (const ExpertChunk& c : w.chunks[size_t(e)])
    if (c.rank == rank) return &c;
  return nullptr;
}

// The experts `rank` computes, in slot order: its own, then the borrowed ones by global id.
std::vector<int64_t> slots_of(const ExpertWork& w, int rank) {
  const int64_t El = w.experts_per_rank, E = El * w.peers;
  std::vector<int64_t> s;
  for (int64_t e = rank * El; e < (rank + 1) * El; ++e) s.push_back(e);
  for (int64_t e = 0; e < E; ++e)
    if (e / El != rank && chunk_of(w, e, rank)) s.push_back(e);
  return s;
}

// p is a permutation of [0, n): q[p[i]] = i.
std::vector<int64_t> inverse_permutation(const std::vector<int64_t>& p) {
  std::vector<int64_t> q(p.size());
  for (size_t i = 0; i < p.size(); ++i) q[size_t(p[i])] = int64_t(i);
  return q;
}

}  // namespace

int64_t EpExchangePlan::sent() const {
  int64_t n = 0;
  for (int64_t r : send_rows) n += r;
  return n;
}

EpExchangePlanPtr make_ep_exchange_plan(const std::vector<int64_t>& offsets, Communicator& ep_group,
                                        const LlepConfig& llep) {
  const char* op = "make_ep_exchange_plan";
  const int P = ep_group.size(), me = ep_group.rank();
  const int64_t E = int64_t(offsets.size()) - 1;
  MOE_CHECK(E >= 1 && offsets.front() == 0, op, "expected offsets [E + 1] starting at 0, got ", offsets.size(),
            " entries");
  MOE_CHECK(E % P == 0, op, "num_experts ", E, " is not a multiple of the expert-parallel group size ", P);
  for (int64_t e = 0; e < E; ++e)
    MOE_CHECK(offsets[size_t(e)] <= offsets[size_t(e) + 1], op, "offsets must be non-decreasing (expert ", e, ")");
  // Every rank's per-expert counts (exact as doubles below 2^53), so all plan the same work.
  std::vector<double> mine(static_cast<size_t>(E));
  for (int64_t e = 0; e < E; ++e) mine[size_t(e)] = double(offsets[size_t(e) + 1] - offsets[size_t(e)]);
  std::vector<double> all = ep_group.all_gather(mine.data(), mine.size());
  std::vector<int64_t> counts(all.size());
  for (size_t i = 0; i < all.size(); ++i) counts[i] = int64_t(all[i]);

  auto plan = std::make_shared<EpExchangePlan>();
  plan->work = plan_expert_work(counts, P, E, llep);
  const ExpertWork& w = plan->work;
  const int64_t El = E / P;
  plan->peers = P;
  plan->local_experts = El;
  // pre[s * E + e]: rows of expert e from ranks before s (where s's rows start in e's order).
  std::vector<int64_t> pre(counts.size(), 0);
  for (int s = 1; s < P; ++s)
    for (int64_t e = 0; e < E; ++e) pre[size_t(s * E + e)] = pre[size_t((s - 1) * E + e)] + counts[size_t((s - 1) * E + e)];
  auto overlap = [&](int s, int64_t e, const ExpertChunk* c) -> std::pair<int64_t, int64_t> {
    if (!c) return {0, 0};
    const int64_t a = pre[size_t(s * E + e)], b = a + counts[size_t(s * E + e)];
    const int64_t lo = std::max(a, c->begin), hi = std::min(b, c->end);
    return {lo - a, std::max<int64_t>(0, hi - lo)};  // (first row within s's rows of e, rows)
  };

  plan->send_segments.resize(size_t(P));
  plan->send_rows.assign(size_t(P), 0);
  plan->lend.resize(size_t(P));
  int64_t pos = 0;
  for (int q = 0; q < P; ++q) {
    for (int64_t e : slots_of(w, q)) {
      const ExpertChunk* c = chunk_of(w, e, q);
      auto [first, rows] = overlap(me, e, c);
      if (rows > 0) {
        EpExchangePlan::Segment seg{offsets[size_t(e)] + first, rows};
        plan->identity_pack = plan->identity_pack && seg.begin == pos;
        pos += rows;
        plan->send_segments[size_t(q)].push_back(seg);
        plan->send_rows[size_t(q)] += rows;
      }
      if (q != me && e / El == me) plan->lend[size_t(q)].push_back(e - int64_t(me) * El);
    }
  }
  plan->identity_pack = plan->identity_pack && pos == offsets.back();
  for (const auto& segs : plan->send_segments)
    for (const auto& sg : segs)
      for (int64_t k = 0; k < sg.rows; ++k) plan->pack_rows.push_back(sg.begin + k);
  MOE_CHECK(pos == offsets.back(), op, "the plan sends ", pos, " of this rank's ", offsets.back(), " rows");

  plan->slot_experts = slots_of(w, me);
  const size_t C = plan->slot_experts.size();
  plan->borrow_count.assign(size_t(P), 0);
  for (size_t j = size_t(El); j < C; ++j) ++plan->borrow_count[size_t(plan->slot_experts[j] / El)];
  plan->recv_rows.assign(size_t(P), 0);
  plan->local_offsets.assign(C + 1, 0);
  std::vector<int64_t> rows_from(size_t(P) * C, 0);  // [source, slot]
  for (int s = 0; s < P; ++s)
    for (size_t j = 0; j < C; ++j) {
      const int64_t e = plan->slot_experts[j];
      const int64_t r = overlap(s, e, chunk_of(w, e, me)).second;
      rows_from[size_t(s) * C + j] = r;
      plan->recv_rows[size_t(s)] += r;
      plan->local_offsets[j + 1] += r;
    }
  for (size_t j = 0; j < C; ++j) plan->local_offsets[j + 1] += plan->local_offsets[j];
  plan->grouped_pos.resize(size_t(plan->received()));
  std::vector<int64_t> fill(plan->local_offsets.begin(), plan->local_offsets.end() - 1);
  size_t i = 0;
  for (int s = 0; s < P; ++s)
    for (size_t j = 0; j < C; ++j)
      for (int64_t r = rows_from[size_t(s) * C + j]; r > 0; --r) plan->grouped_pos[i++] = fill[j]++;
  plan->slot_source = inverse_permutation(plan->grouped_pos);
  plan->unpack_rows = inverse_permutation(plan->pack_rows);
  return plan;
}

}  // namespace moe
