// balance.scope = "global": the coupled strategies (bip, quantile, sinkhorn, ssr, expert_choice)
// on W simulated ranks (threads sharing a communicator) reproduce one process on the whole batch.
#include <gtest/gtest.h>

#include <barrier>
#include <cmath>
#include <cstring>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>

#include "core/error.h"
#include "layers/moe/balance/global_batch.h"
#include "layers/moe/balance/sinkhorn_plan.h"
#include "parallel/communicator.h"
#include "tests/balance_test_helpers.h"

using namespace moe;
using namespace moe::test;

namespace {

// W ranks as threads of this process: each collective publishes every rank's buffer, waits for
// all, reads them in rank order (so sums are identical on every rank), and waits again before
// any buffer is reused. Only what the balancers call is needed, but every collective works.
struct ThreadGroup {
  explicit ThreadGroup(int w) : world(w), slots(size_t(w)), counts(size_t(w)), sync(w) {}
  int world;
  std::vector<std::vector<char>> slots;
  std::vector<std::vector<int64_t>> counts;
  std::barrier<> sync;
};

class ThreadCommunicator final : public Communicator {
 public:
  ThreadCommunicator(std::shared_ptr<ThreadGroup> g, int rank) : g_(std::move(g)), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return g_->world; }
  std::string backend() const override { return "threads"; }

  void all_reduce_sum(double* d, size_t n) override { reduce(d, n, [](double a, double b) { return a + b; }); }
  void all_reduce_sum(float* d, size_t n) override { reduce(d, n, [](float a, float b) { return a + b; }); }
  void all_reduce_max(double* d, size_t n) override { reduce(d, n, [](double a, double b) { return std::max(a, b); }); }
  std::vector<double> all_gather(const double* d, size_t n) override { return gather(d, n); }
  std::vector<uint64_t> all_gather(const uint64_t* d, size_t n) override { return gather(d, n); }
  void broadcast(double* d, size_t n, int root) override { bcast(d, n, root); }
  void broadcast(uint64_t* d, size_t n, int root) override { bcast(d, n, root); }
  void alltoallv(const float* s, const std::vector<int64_t>& sc, float* r, const std::vector<int64_t>& rc) override {
    a2av(s, sc, r, rc);
  }
  void alltoallv(const double* s, const std::vector<int64_t>& sc, double* r, const std::vector<int64_t>& rc) override {
    a2av(s, sc, r, rc);
  }
  void barrier() override {
    ++collectives;
    g_->sync.arrive_and_wait();
  }
  std::shared_ptr<Communicator> split(int, int) override {
    MOE_FAIL("ThreadCommunicator.split", "sub-communicators are not simulated by the balancing tests");
  }

  int collectives = 0;  // calls made by this rank (the cost the tests bound)

 private:
  // Every rank's n values of type T, in rank order.
  template <class T>
  std::vector<T> exchange(const T* d, size_t n) {
    auto& mine = g_->slots[size_t(rank_)];
    mine.resize(n * sizeof(T));
    if (n) std::memcpy(mine.data(), d, n * sizeof(T));
    g_->sync.arrive_and_wait();
    std::vector<T> all;
    for (const auto& s : g_->slots) {
      MOE_CHECK(s.size() == n * sizeof(T), "ThreadCommunicator", "ranks passed different counts");
      const T* v = reinterpret_cast<const T*>(s.data());
      all.insert(all.end(), v, v + n);
    }
    g_->sync.arrive_and_wait();
    return all;
  }
  template <class T, class Op>
  void reduce(T* d, size_t n, Op op) {
    ++collectives;
    std::vector<T> all = exchange(d, n);
    for (size_t i = 0; i < n; ++i) {
      T acc = all[i];
      for (int r = 1; r < g_->world; ++r) acc = op(acc, all[size_t(r) * n + i]);
      d[i] = acc;
    }
  }
  template <class T>
  std::vector<T> gather(const T* d, size_t n) {
    ++collectives;
    return exchange(d, n);
  }
  template <class T>
  void bcast(T* d, size_t n, int root) {
    ++collectives;
    std::vector<T> all = exchange(d, n);
    std::copy(all.begin() + ptrdiff_t(size_t(root) * n), all.begin() + ptrdiff_t(size_t(root + 1) * n), d);
  }
  template <class T>
  void a2av(const T* s, const std::vector<int64_t>& sc, T* r, const std::vector<int64_t>& rc) {
    ++collectives;
    const int W = g_->world;
    int64_t total = 0;
    for (int64_t c : sc) total += c;
    g_->counts[size_t(rank_)] = sc;
    std::vector<T> all_send;
    {
      // Send buffers differ in length: publish each padded to the longest.
      std::vector<int64_t> lens = exchange(&total, 1);
      int64_t widest = *std::max_element(lens.begin(), lens.end());
      std::vector<T> padded(s, s + total);
      padded.resize(size_t(widest));
      all_send = exchange(padded.data(), padded.size());
      T* out = r;
      for (int p = 0; p < W; ++p) {
        const auto& pc = g_->counts[size_t(p)];
        int64_t off = 0;
        for (int q = 0; q < rank_; ++q) off += pc[size_t(q)];
        MOE_CHECK(pc[size_t(rank_)] == rc[size_t(p)], "ThreadCommunicator.alltoallv", "count mismatch");
        const T* src = all_send.data() + size_t(p) * size_t(widest) + size_t(off);
        out = std::copy(src, src + pc[size_t(rank_)], out);
      }
    }
    g_->sync.arrive_and_wait();
  }

  std::shared_ptr<ThreadGroup> g_;
  int rank_;
};

// Runs fn(rank, comm) on W threads; the first exception of any rank is rethrown here.
void run_ranks(int W, const std::function<void(int, std::shared_ptr<ThreadCommunicator>)>& fn) {
  auto group = std::make_shared<ThreadGroup>(W);
  std::exception_ptr failure;
  std::mutex mu;
  std::vector<std::thread> threads;
  for (int r = 0; r < W; ++r)
    threads.emplace_back([&, r] {
      try {
        fn(r, std::make_shared<ThreadCommunicator>(group, r));
      } catch (...) {
        std::lock_guard<std::mutex> lock(mu);
        if (!failure) failure = std::current_exception();
      }
    });
  for (auto& t : threads) t.join();
  if (failure) std::rethrow_exception(failure);
}

// Rows [lo, lo + n) of a [T, E] f64 tensor, as a new leaf.
Tensor rows_of(const Tensor& x, int64_t lo, int64_t n) {
  const int64_t E = x.size(1);
  std::vector<double> v = x.contiguous().to_double_vector();
  return Tensor::from_vector<double>(std::vector<double>(v.begin() + lo * E, v.begin() + (lo + n) * E), {n, E});
}

struct Picked {
  std::vector<int64_t> token, expert;
  std::vector<double> gate, score;
};

Picked picked(const Routing& r, int64_t lo = 0, int64_t n = INT64_MAX) {
  Picked p;
  auto tok = r.token.to_vector<int64_t>(), ex = r.expert.to_vector<int64_t>();
  auto g = values(r.gate), s = values(r.score);
  for (size_t a = 0; a < tok.size(); ++a) {
    if (tok[a] < lo || tok[a] - lo >= n) continue;
    p.token.push_back(tok[a] - lo);
    p.expert.push_back(ex[a]);
    p.gate.push_back(g[a]);
    p.score.push_back(s[a]);
  }
  return p;
}

void expect_same(const Picked& a, const Picked& b, double tol, const std::string& what) {
  ASSERT_EQ(a.token, b.token) << what;
  ASSERT_EQ(a.expert, b.expert) << what;
  for (size_t i = 0; i < a.gate.size(); ++i) {
    EXPECT_NEAR(a.gate[i], b.gate[i], tol) << what << " gate " << i;
    EXPECT_NEAR(a.score[i], b.score[i], tol * std::max(1.0, std::fabs(a.score[i]))) << what << " score " << i;
  }
}

struct Case {
  std::string name;
  MoeConfig cfg;
};

std::vector<Case> coupled_cases() {
  std::vector<Case> out;
  auto add = [&](const std::string& name, const std::string& strategy, int64_t k, auto tweak) {
    MoeConfig cfg = balance_config(strategy, 5, k);
    tweak(cfg.balance);
    out.push_back({name, cfg});
  };
  add("bip_paper", "bip", 2, [](BalanceConfig&) {});
  add("bip_causal", "bip", 2, [](BalanceConfig& b) { b.bip_order = "causal"; });
  add("quantile", "quantile", 2, [](BalanceConfig& b) { b.quantile_rate = 0.5; });
  add("sinkhorn_k2", "sinkhorn", 2, [](BalanceConfig&) {});
  add("sinkhorn_k1", "sinkhorn", 1, [](BalanceConfig&) {});
  add("ssr_plan", "ssr", 2, [](BalanceConfig& b) { b.ssr_probability = 1.0; });
  add("expert_choice", "expert_choice", 2, [](BalanceConfig&) {});
  return out;
}

// Three batches of 37 tokens split 13 / 11 / 13 over 3 ranks (unequal on purpose), then an eval
// batch: each rank's routing equals the single process's rows of that rank, and the states too.
constexpr int kRanks = 3;
const int64_t kRows[kRanks] = {13, 11, 13};
constexpr int64_t kTokens = 37, kExperts = 5;

Tensor batch_logits(int b) { return favoured_logits(kTokens, kExperts, 500 + uint64_t(b), 1.5, DType::f64); }

}  // namespace

TEST(BalanceGlobalScope, ColumnSharesTransposeUnequalRanksAndReturn) {
  // 3 ranks with 2, 0 and 3 tokens; 4 experts (blocks [0,1), [1,2), [2,4)) and 2 experts (one
  // rank owns none). Value of (rank r, token i, expert j) = 100 r + 10 i + j.
  const int64_t rows[3] = {2, 0, 3};
  for (int64_t E : {4, 2}) {
    SCOPED_TRACE(E);
    run_ranks(3, [&](int r, std::shared_ptr<ThreadCommunicator> c) {
      std::vector<double> mine;
      for (int64_t i = 0; i < rows[r]; ++i)
        for (int64_t j = 0; j < E; ++j) mine.push_back(100.0 * r + 10.0 * double(i) + double(j));
      ColumnShare sh = share_columns(*c, mine, rows[r], E, "test");
      EXPECT_EQ(c->collectives, 2);  // the shapes, then one alltoallv
      EXPECT_EQ(sh.total, 5);
      EXPECT_EQ(sh.offset, r == 0 ? 0 : 2);
      EXPECT_EQ(sh.rows, (std::vector<int64_t>{2, 0, 3}));
      auto [b, e] = owned_columns(E, r, 3);
      EXPECT_EQ(sh.col_begin, b);
      EXPECT_EQ(sh.col_end, e);
      std::vector<double> want;
      for (int64_t j = b; j < e; ++j)
        for (double base : {0.0, 10.0, 200.0, 210.0, 220.0}) want.push_back(base + double(j));
      EXPECT_EQ(sh.columns, want);
      // Back to the token holders: the owners' values, negated to tell them from the input.
      std::vector<double> owned = sh.columns;
      for (double& v : owned) v = -v;
      std::vector<double> back = return_columns(*c, sh, owned, E);
      ASSERT_EQ(back.size(), mine.size());
      for (size_t i = 0; i < mine.size(); ++i) EXPECT_EQ(back[i], -mine[i]);
      std::vector<double> gathered = all_gather_varying(*c, mine.data(), std::vector<int64_t>{2 * E, 0, 3 * E});
      EXPECT_EQ(gathered.size(), size_t(5 * E));
      EXPECT_EQ(gathered[size_t(2 * E)], 200.0);
    });
  }
  EXPECT_EQ(owned_columns(16, 0, 3), (std::pair<int64_t, int64_t>{0, 5}));
  EXPECT_EQ(owned_columns(16, 2, 3), (std::pair<int64_t, int64_t>{10, 16}));
}

TEST(BalanceGlobalScope, RanksWithDifferentExpertCountsAreRefused) {
  try {
    run_ranks(2, [&](int r, std::shared_ptr<ThreadCommunicator> c) {
      share_columns(*c, std::vector<double>(size_t(3 + r), 0.0), 1, 3 + r, "balance.bip");
    });
    ADD_FAILURE() << "different expert counts accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("balance.scope = global needs the same router"), std::string::npos)
        << e.what();
  }
}

TEST(BalanceGlobalScope, NaNOnOneRankStopsEveryRankWithTheSameError) {
  std::vector<std::string> errors(3);
  run_ranks(3, [&](int r, std::shared_ptr<ThreadCommunicator> c) {
    MoeConfig cfg = balance_config("expert_choice", kExperts, 2);
    auto b = make_balancer(cfg);
    b->set_communicator(c);
    std::vector<double> v = randn_f64({4, kExperts}, 40 + uint64_t(r), 1.0, false).to_double_vector();
    if (r == 2) v[size_t(1 * kExperts + 3)] = std::nan("");
    Philox rng;
    try {
      b->select(router_output(Tensor::from_vector<double>(v, {4, kExperts}), kExperts, 2), rng);
    } catch (const Error& e) {
      errors[size_t(r)] = e.what();
    }
  });
  for (const auto& e : errors) {
    EXPECT_NE(e.find("NaN on rank 2 (token 1, expert "), std::string::npos) << e;
    EXPECT_EQ(e, errors[0]);
  }
}

TEST(BalanceGlobalScope, EveryCoupledStrategyReproducesTheSingleProcess) {
  for (const Case& c : coupled_cases()) {
    SCOPED_TRACE(c.name);
    // The single process: the whole batch at once.
    auto single = make_balancer(c.cfg);
    Philox rng0(9, 1, 0);
    std::vector<Picked> ref;
    for (int b = 0; b < 4; ++b)
      ref.push_back(picked(single->select(router_output(batch_logits(b), kExperts, c.cfg.top_k, b < 3), rng0)));
    std::vector<std::vector<Picked>> got(kRanks);
    std::vector<std::vector<double>> states(kRanks);
    run_ranks(kRanks, [&](int r, std::shared_ptr<ThreadCommunicator> comm) {
      auto bal = make_balancer(c.cfg);
      bal->set_communicator(comm);
      Philox rng(9, 1, 0);  // every rank's stream at the single process's offset
      int64_t lo = 0;
      for (int q = 0; q < r; ++q) lo += kRows[q];
      for (int b = 0; b < 4; ++b) {
        Tensor x = rows_of(batch_logits(b), lo, kRows[r]);
        got[size_t(r)].push_back(picked(bal->select(router_output(x, kExperts, c.cfg.top_k, b < 3), rng)));
      }
      states[size_t(r)] = bal->state_vector();
    });
    int64_t lo = 0;
    for (int r = 0; r < kRanks; ++r) {
      for (int b = 0; b < 4; ++b) {
        Picked want;
        const Picked& all = ref[size_t(b)];
        for (size_t a = 0; a < all.token.size(); ++a)
          if (all.token[a] >= lo && all.token[a] < lo + kRows[r]) {
            want.token.push_back(all.token[a] - lo);
            want.expert.push_back(all.expert[a]);
            want.gate.push_back(all.gate[a]);
            want.score.push_back(all.score[a]);
          }
        expect_same(got[size_t(r)][size_t(b)], want, 1e-12,
                    "rank " + std::to_string(r) + " batch " + std::to_string(b));
      }
      EXPECT_EQ(states[size_t(r)], single->state_vector()) << "rank " << r;
      lo += kRows[r];
    }
  }
}

TEST(BalanceGlobalScope, MicroBatchAuxLossesAveragedOverRanksAreTheSingleProcessLoss) {
  // aux_loss micro_batch and null_experts: f_i from the all-reduced loads, P_i local. The trainer
  // averages the ranks' values and gradients (equal token counts per rank): the mean of the
  // ranks' losses is the single process's, and each rank's gradient / W is the single process's
  // gradient on its rows. 3 ranks x 12 tokens.
  const int64_t rows = 12, T = 3 * rows;
  for (const std::string strategy : {"aux_loss", "null_experts"}) {
    SCOPED_TRACE(strategy);
    MoeConfig cfg = balance_config(strategy, kExperts, 2);
    cfg.balance.num_null_experts = strategy == "null_experts" ? 2 : 0;
    const int64_t outputs = kExperts + cfg.balance.num_null_experts;
    Tensor x = favoured_logits(T, outputs, 77, 1.0, DType::f64);
    auto run = [&](const Tensor& logits, Balancer& b, std::vector<double>& grad) {
      Tensor leaf = logits.detach().clone();
      leaf.set_requires_grad(true);
      RouterOutput in = router_output(leaf, kExperts, 2);
      Philox rng;
      Routing r = b.select(in, rng);
      ExtraLoss aux = b.extra_losses(in, r)[0];
      aux.scaled.backward();
      grad = values(leaf.grad());
      return aux.unscaled;
    };
    auto single = make_balancer(cfg);
    std::vector<double> grad_one;
    const double loss_one = run(x, *single, grad_one);
    std::vector<double> losses(3);
    std::vector<std::vector<double>> grads(3);
    run_ranks(3, [&](int r, std::shared_ptr<ThreadCommunicator> c) {
      auto b = make_balancer(cfg);
      b->set_communicator(c);
      losses[size_t(r)] = run(rows_of(x, r * rows, rows), *b, grads[size_t(r)]);
      EXPECT_EQ(c->collectives, 1);  // one all-reduce of the loads
    });
    EXPECT_NEAR((losses[0] + losses[1] + losses[2]) / 3, loss_one, 1e-12);
    EXPECT_GT(std::fabs(losses[0] - loss_one), 1e-6) << "a rank's own value is not the global one";
    for (int r = 0; r < 3; ++r)
      for (int64_t i = 0; i < rows * outputs; ++i)
        EXPECT_NEAR(grads[size_t(r)][size_t(i)] / 3, grad_one[size_t(r * rows * outputs + i)], 1e-15);
  }
}

TEST(BalanceGlobalScope, CollectivesPerTrainingSelect) {
  // The cost model of docs/parallel.md: bip = the column share (2) + 2 all-gathers per dual
  // iteration; quantile the same with one iteration; expert_choice = the share + the picks' way
  // back; eval: bip / quantile none, expert_choice the same 3.
  struct Want {
    std::string strategy;
    int train, eval;
  };
  for (const Want& w : {Want{"bip", 2 + 2 * 4, 0}, Want{"quantile", 2 + 2, 0}, Want{"expert_choice", 3, 3}}) {
    SCOPED_TRACE(w.strategy);
    run_ranks(kRanks, [&](int r, std::shared_ptr<ThreadCommunicator> c) {
      auto b = make_balancer(balance_config(w.strategy, kExperts, 2));
      b->set_communicator(c);
      Philox rng;
      Tensor x = rows_of(batch_logits(0), 0, kRows[r]);
      b->select(router_output(x, kExperts, 2), rng);
      EXPECT_EQ(c->collectives, w.train);
      b->select(router_output(x, kExperts, 2, /*training=*/false), rng);
      EXPECT_EQ(c->collectives, w.train + w.eval);
    });
  }
}

TEST(BalanceGlobalScope, GlobalRoutingDiffersFromTheRankLocalOne) {
  // The reproduction above would also hold for a rank-local computation if the two coincided:
  // they do not here. Rank 0's rows routed within the whole batch vs on their own differ in a
  // choice, a score or the state after the batches, for every strategy.
  for (const Case& c : coupled_cases()) {
    SCOPED_TRACE(c.name);
    auto whole = make_balancer(c.cfg), alone = make_balancer(c.cfg);
    Philox a(9, 1, 0), b(9, 1, 0);
    bool differs = false;
    for (int i = 0; i < 3; ++i) {
      Picked g = picked(whole->select(router_output(batch_logits(i), kExperts, c.cfg.top_k), a), 0, kRows[0]);
      Picked l = picked(alone->select(router_output(rows_of(batch_logits(i), 0, kRows[0]), kExperts, c.cfg.top_k), b));
      differs = differs || g.token != l.token || g.expert != l.expert;
      for (size_t j = 0; j < g.score.size() && j < l.score.size(); ++j)
        differs = differs || std::fabs(g.score[j] - l.score[j]) > 1e-9;
    }
    differs = differs || whole->state_vector() != alone->state_vector();
    EXPECT_TRUE(differs);
  }
}

TEST(BalanceGlobalScope, LocalScopeRoutesEachRankAloneWithoutCollectives) {
  for (Case c : coupled_cases()) {
    SCOPED_TRACE(c.name);
    c.cfg.balance.scope = "local";
    run_ranks(kRanks, [&](int r, std::shared_ptr<ThreadCommunicator> comm) {
      auto bal = make_balancer(c.cfg), alone = make_balancer(c.cfg);
      bal->set_communicator(comm);
      Philox rng(9, 1, 0), rng_alone(9, 1, 0);
      int64_t lo = 0;
      for (int q = 0; q < r; ++q) lo += kRows[q];
      for (int b = 0; b < 3; ++b) {
        Tensor x = rows_of(batch_logits(b), lo, kRows[r]);
        expect_same(picked(bal->select(router_output(x, kExperts, c.cfg.top_k), rng)),
                    picked(alone->select(router_output(x, kExperts, c.cfg.top_k), rng_alone)), 0.0, "rank local");
      }
      EXPECT_EQ(comm->collectives, 0);
      EXPECT_EQ(bal->state_vector(), alone->state_vector());
    });
  }
}

TEST(BalanceGlobalScope, SelfCommunicatorIsTheSingleProcessBitForBit) {
  for (const Case& c : coupled_cases()) {
    SCOPED_TRACE(c.name);
    auto with = make_balancer(c.cfg), without = make_balancer(c.cfg);
    with->set_communicator(make_self_communicator());
    Philox a(9, 1, 0), b(9, 1, 0);
    for (int i = 0; i < 3; ++i) {
      RouterOutput in = router_output(batch_logits(i), kExperts, c.cfg.top_k);
      expect_same(picked(with->select(in, a)), picked(without->select(in, b)), 0.0, "self");
    }
    EXPECT_EQ(with->state_vector(), without->state_vector());
  }
}

TEST(BalanceGlobalScope, DistributedSinkhornPlanMatchesInBothDomains) {
  Tensor x = randn_f64({kTokens, kExperts}, 31, 2.0);
  for (bool force_log : {false, true}) {
    SinkhornPlan one = sinkhorn_plan(x, 1.0, 200, 1e-9, force_log);
    run_ranks(kRanks, [&](int r, std::shared_ptr<ThreadCommunicator> c) {
      int64_t lo = 0;
      for (int q = 0; q < r; ++q) lo += kRows[q];
      SinkhornPlan p = sinkhorn_plan(rows_of(x, lo, kRows[r]), 1.0, 200, 1e-9, force_log, c.get());
      EXPECT_EQ(p.tokens, kRows[r]);
      EXPECT_EQ(p.global_tokens, kTokens);
      EXPECT_EQ(p.log_domain, force_log);
      EXPECT_EQ(p.iterations, one.iterations);
      for (int64_t j = 0; j < kExperts; ++j) EXPECT_NEAR(p.log_d1[size_t(j)], one.log_d1[size_t(j)], 1e-12);
      for (int64_t i = 0; i < kRows[r] * kExperts; ++i)
        EXPECT_NEAR(p.log_plan[size_t(i)], one.log_plan[size_t(lo * kExperts + i)], 1e-12);
      // one row-count all-reduce, then one collective per iteration
      EXPECT_EQ(c->collectives, 1 + one.iterations);
    });
  }
}

TEST(BalanceGlobalScope, LogDomainFallbackIsDecidedAsInTheSingleProcess) {
  // Collapsed rows (expert 0 at +80, the rest at -80, xi = 0.05) underflow every other column of
  // the linear kernel. On rank 1's rows only, other ranks' rows keep those columns alive: the
  // single process stays linear and so must every rank. On every row, the columns die: the
  // single process falls back to the log domain and every rank must too, in the same iteration.
  const int64_t E = 4;
  for (bool all_rows : {false, true}) {
    SCOPED_TRACE(all_rows ? "every row collapsed" : "rank 1's rows collapsed");
    std::vector<double> v = randn_f64({kTokens, E}, 32, 1.0, false).to_double_vector();
    for (int64_t t = all_rows ? 0 : kRows[0]; t < (all_rows ? kTokens : kRows[0] + kRows[1]); ++t)
      for (int64_t e = 0; e < E; ++e) v[size_t(t * E + e)] = e == 0 ? 80.0 : -80.0;
    Tensor x = Tensor::from_vector<double>(v, {kTokens, E});
    SinkhornPlan one = sinkhorn_plan(x, 0.05, 100, 1e-4);
    EXPECT_EQ(one.log_domain, all_rows);
    run_ranks(kRanks, [&](int r, std::shared_ptr<ThreadCommunicator> c) {
      int64_t lo = 0;
      for (int q = 0; q < r; ++q) lo += kRows[q];
      SinkhornPlan p = sinkhorn_plan(rows_of(x, lo, kRows[r]), 0.05, 100, 1e-4, false, c.get());
      EXPECT_EQ(p.log_domain, one.log_domain) << "rank " << r;
      EXPECT_EQ(p.iterations, one.iterations) << "rank " << r;
      for (int64_t i = 0; i < kRows[r] * E; ++i) {
        ASSERT_TRUE(std::isfinite(p.log_plan[size_t(i)]));
        EXPECT_NEAR(p.log_plan[size_t(i)], one.log_plan[size_t(lo * E + i)], 1e-9);
      }
    });
  }
}

TEST(BalanceGlobalScope, UnknownScopeIsRefusedNamingTheKey) {
  MoeConfig cfg = balance_config("bip", 4, 2);
  cfg.balance.scope = "world";
  try {
    make_balancer(cfg);
    ADD_FAILURE() << "scope 'world' accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("balance.scope"), std::string::npos) << e.what();
  }
}

// Balancer::routes_on_device(): a strategy routes on the device unless its batch spans
// data-parallel ranks (the device paths have no collectives): with scope "global" and two ranks
// the batch-coupled strategies (and the aux loss over the global micro-batch) say no, the others
// yes; scope "local", a world of one, or no communicator: yes; aux_loss "global" (loads accumulated
// across micro-batches) never. Saying yes wrongly would route one rank's tokens alone, silently.
TEST(BalanceGlobalScope, DeviceRoutingOnlyWhereTheBatchIsTheProcesssOwn) {
  struct Expect {
    std::string strategy, aux_variant;
    bool global_two_ranks;  // routes_on_device() with scope "global" over two ranks
  };
  const std::vector<Expect> expects = {
      {"none", "", true},          {"aux_loss", "micro_batch", false}, {"aux_loss", "per_sequence", true},
      {"loss_free", "", true},     {"sinkhorn", "", false},            {"ssr", "", false},
      {"bip", "", false},          {"quantile", "", false},            {"expert_choice", "", false},
      {"top_p", "", true},         {"null_experts", "", true}};
  auto group = std::make_shared<ThreadGroup>(2);
  for (const Expect& e : expects) {
    SCOPED_TRACE(e.strategy + " " + e.aux_variant);
    MoeConfig cfg = balance_config(e.strategy);
    if (!e.aux_variant.empty()) cfg.balance.aux_variant = e.aux_variant;
    if (e.strategy == "null_experts") cfg.balance.num_null_experts = 2;
    auto alone = make_balancer(cfg), self = make_balancer(cfg), two = make_balancer(cfg);
    self->set_communicator(make_self_communicator());
    two->set_communicator(std::make_shared<ThreadCommunicator>(group, 0));
    EXPECT_TRUE(alone->routes_on_device());
    EXPECT_TRUE(self->routes_on_device());
    EXPECT_EQ(two->routes_on_device(), e.global_two_ranks);
    cfg.balance.scope = "local";
    auto local = make_balancer(cfg);
    local->set_communicator(std::make_shared<ThreadCommunicator>(group, 0));
    EXPECT_TRUE(local->routes_on_device());
  }
  MoeConfig global = balance_config("aux_loss");
  global.balance.aux_variant = "global";
  EXPECT_FALSE(make_balancer(global)->routes_on_device());
}
