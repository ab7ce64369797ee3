// Expert parallelism under mpirun (np 2: EP = 2; np 4: EP = 2 x DP = 2 and EP = 4): the EP
// layer equals the replicated layer (outputs and every gradient, f64), the trainer reproduces
// the single-process run, and checkpoints move between (dp, ep) layouts and world sizes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "checkpoints/checkpoint.h"
#include "core/error.h"
#include "core/ops.h"
#include "core/rng.h"
#include "layers/moe/expert_parallel.h"
#include "layers/moe/moe_layer.h"
#include "parallel/communicator.h"
#include "parallel/process_groups.h"
#include "tests/mpi/mpi_train_helpers.h"

namespace fs = std::filesystem;
using namespace moe;
using test::expect_rel;
using test::max_abs_diff;
using test::metric;

namespace {

// N(0, 1) f64 entries from Philox(seed) (tests/gradcheck.cpp is not part of this binary).
Tensor randn(const Shape& shape, uint64_t seed) {
  Philox rng(seed, 3);
  Tensor t = Tensor::empty(shape, DType::f64);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<double>()[i] = rng.normal();
  return t;
}

ModelConfig layer_config(int64_t E, int64_t k, int64_t D, int64_t H) {
  ModelConfig c;
  c.d_model = D;
  c.init_std = 0.4;
  c.moe.num_experts = E;
  c.moe.top_k = k;
  c.moe.expert_hidden = H;
  c.moe.balance.strategy = "none";
  return c;
}

struct LayerRun {
  Tensor y, gx;
  std::vector<std::pair<std::string, Tensor>> grads;  // every parameter's grad, model order
};

// One training forward and backward of sum(y * proj) + the layer's extra losses.
LayerRun run_layer(MoeLayer& layer, const Tensor& x0, const Tensor& proj) {
  Tensor x = x0.clone();
  x.set_requires_grad(true);
  layer.zero_grad();
  LayerRun out;
  out.y = layer.forward(x);
  Tensor loss = sum_all(mul(out.y, proj));
  for (const ExtraLoss& l : layer.extra_losses()) loss = add(loss, l.scaled);
  loss.backward();
  out.gx = x.grad();
  for (auto& [n, p] : layer.named_parameters()) out.grads.emplace_back(n, p.grad());
  return out;
}

// Each rank routes its own tokens [B, S, D] (different on every rank) through the EP layer and
// through a replicated layer of the same seed. Outputs, input grads and replicated parameters'
// grads must agree per rank; the EP rank's expert grads must be the sum over its EP group of
// the replicated layer's grads of those experts (their tokens were computed here).
void expect_ep_layer_matches(const ProcessGroups& g, ModelConfig c, const MoeLayer::SelectOverride& route = nullptr,
                             const LlepConfig& llep = {}) {
  const int r = g.world->rank();
  const int64_t B = 2, S = 3, D = c.d_model;
  Philox rng_a(17, 1), rng_b(17, 1);
  MoeLayer ref(c, 1, rng_a, DType::f64);
  MoeLayer ep(c, 1, rng_b, DType::f64, g.ep);
  ASSERT_TRUE(ep.expert_parallel());
  ASSERT_EQ(ep.experts().num_experts(), c.moe.num_experts / g.layout.ep);
  EXPECT_EQ(ep.first_expert(), g.layout.ep_rank * ep.experts().num_experts());
  if (route) {
    ref.set_select_override(route);
    ep.set_select_override(route);
  }
  ep.set_llep(llep);
  Tensor x = randn({B, S, D}, 100 + uint64_t(r));
  Tensor proj = randn({B, S, D}, 200 + uint64_t(r));
  LayerRun a = run_layer(ref, x, proj), b = run_layer(ep, x, proj);
  EXPECT_LT(max_abs_diff(a.y, b.y), 1e-12) << "output on rank " << r;
  EXPECT_LT(max_abs_diff(a.gx, b.gx), 1e-12) << "input grad on rank " << r;
  ASSERT_EQ(a.grads.size(), b.grads.size());
  const int64_t El = ep.experts().num_experts(), first = ep.first_expert();
  for (size_t i = 0; i < a.grads.size(); ++i) {
    const std::string& name = a.grads[i].first;
    ASSERT_EQ(name, b.grads[i].first);
    Tensor ga = a.grads[i].second, gb = b.grads[i].second;
    ASSERT_TRUE(ga.defined() && gb.defined()) << name;
    if (name.rfind("experts.", 0) == 0) {
      std::vector<double> full = ga.to_double_vector();
      g.ep->all_reduce_sum(full);  // the EP group's tokens' contributions to every expert
      Tensor summed = Tensor::from_vector<double>(full, ga.shape()).slice(0, first, first + El);
      EXPECT_LT(max_abs_diff(summed, gb), 1e-12) << name << " on rank " << r;
      double norm = 0;
      for (double v : gb.to_double_vector()) norm += v * v;
      if (!route) {  // a forced routing may leave a rank's own experts without rows
        EXPECT_GT(norm, 0) << name << ": the local experts got no gradient on rank " << r;
      }
    } else {
      EXPECT_LT(max_abs_diff(ga, gb), 1e-12) << name << " on rank " << r;
    }
  }
  // The phases were timed, forward and backward.
  MoePhaseTimes t = ep.take_phase_times();
  EXPECT_GT(t.dispatch, 0);
  EXPECT_GT(t.expert, 0);
  EXPECT_GT(t.combine, 0);
  MoePhaseTimes none = ep.take_phase_times();
  EXPECT_EQ(none.dispatch + none.expert + none.combine, 0.0);
}

// Every token to experts 0 and 1 (k = 2), gates from the scores: rank 0 of each EP group owns
// both at EP 2 (at EP 4 ranks 0 and 1 own one each), so the work is as skewed as it gets.
Routing to_experts_0_and_1(const RouterOutput& in) {
  const int64_t T = in.scores.size(0);
  std::vector<int64_t> tok, ex;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t e : {0, 1}) tok.push_back(t), ex.push_back(e);
  Routing rt;
  rt.token = Tensor::from_vector<int64_t>(tok, {2 * T});
  rt.expert = Tensor::from_vector<int64_t>(ex, {2 * T});
  rt.gate = in.scores.slice(1, 0, 2).reshape({2 * T});
  rt.score = rt.gate.detach();
  return rt;
}

std::vector<int> ep_sizes(int world) {
  std::vector<int> out = {2};
  if (world > 2) out.push_back(world);
  return out;
}

}  // namespace

TEST(ExpertParallelLayer, EqualsTheReplicatedLayer) {
  auto w = world_communicator();
  for (int ep : ep_sizes(w->size())) {
    SCOPED_TRACE("ep = " + std::to_string(ep));
    ProcessGroups g = make_process_groups(w, ep, 4, true);
    // Odd sizes, E = 4, k = 2, z-loss on.
    ModelConfig c = layer_config(4, 2, 5, 7);
    c.moe.z_loss_coef = 0.1;
    expect_ep_layer_matches(g, c);
    // Shared experts (replicated) and a capacity factor (drops decided per rank, before the exchange).
    c.moe.num_shared_experts = 1;
    c.moe.capacity_factor = 0.75;
    c.moe.drop_policy = "position";
    expect_ep_layer_matches(g, c);
  }
}

TEST(ExpertParallelLayer, RanksWithNoRowsStillTakePartInTheExchange) {
  // Every token of every rank goes to expert 0 only (k = 1): the other ranks of each EP group
  // receive no rows, send rows only to their group's rank 0, and compute nothing.
  auto w = world_communicator();
  for (int ep : ep_sizes(w->size())) {
    SCOPED_TRACE("ep = " + std::to_string(ep));
    ProcessGroups g = make_process_groups(w, ep, 4, true);
    ModelConfig c = layer_config(4, 1, 5, 7);
    auto all_to_zero = [](const RouterOutput& in) {
      const int64_t T = in.scores.size(0);
      Routing rt;
      rt.token = Tensor::arange(T);
      rt.expert = Tensor::zeros({T}, DType::i64);
      // The gate is the token's score for expert 0 (differentiable, so the router gets grads).
      rt.gate = in.scores.slice(1, 0, 1).reshape({T});
      rt.score = rt.gate.detach();
      return rt;
    };
    expect_ep_layer_matches(g, c, all_to_zero);
  }
}

TEST(ExpertParallelLayer, ExchangePlanCountsAndErrors) {
  auto w = world_communicator();
  const int P = w->size(), r = w->rank();
  // E = 2P experts; rank r sends (r + 1) rows to expert 2p and (p + 1) rows to expert 2p + 1 of peer p.
  std::vector<int64_t> offsets = {0};
  for (int p = 0; p < P; ++p) {
    offsets.push_back(offsets.back() + r + 1);
    offsets.push_back(offsets.back() + p + 1);
  }
  EpExchangePlanPtr plan = make_ep_exchange_plan(offsets, *w);
  EXPECT_EQ(plan->local_experts, 2);
  int64_t from_all = 0;
  for (int s = 0; s < P; ++s) {
    EXPECT_EQ(plan->send_rows[size_t(s)], r + 1 + s + 1);
    EXPECT_EQ(plan->recv_rows[size_t(s)], (s + 1) + (r + 1));
    from_all += s + 1;
  }
  EXPECT_EQ(plan->local_offsets, (std::vector<int64_t>{0, from_all, from_all + P * int64_t(r + 1)}));
  // Received row order is source-major; grouped rows are expert-major: source s's first row of
  // local expert 0 lands after the rows of sources < s.
  int64_t before = 0;
  size_t i = 0;
  for (int s = 0; s < P; ++s) {
    EXPECT_EQ(plan->grouped_pos[i], before) << "source " << s;
    i += size_t(plan->recv_rows[size_t(s)]);
    before += s + 1;
  }
  // The rows themselves: row value = 1000 r + global expert + position / 100, checked after the
  // exchange and after the way back.
  const int64_t D = 3, N = offsets.back();
  Tensor xs = Tensor::empty({N, D}, DType::f64);
  for (int64_t e = 0; e < 2 * P; ++e)
    for (int64_t row = offsets[size_t(e)]; row < offsets[size_t(e) + 1]; ++row)
      for (int64_t d = 0; d < D; ++d) xs.data<double>()[row * D + d] = 1000.0 * r + double(e) + double(row) / 100;
  Tensor xr = ep_dispatch(xs, plan, w);
  ASSERT_EQ(xr.size(0), plan->received());
  for (int64_t j = 0; j < 2; ++j)
    for (int64_t row = plan->local_offsets[size_t(j)]; row < plan->local_offsets[size_t(j) + 1]; ++row) {
      double v = xr.data<double>()[row * D];
      EXPECT_EQ(int64_t(std::fmod(v, 1000.0)), 2 * r + j) << "row " << row << " is of another expert";
    }
  Tensor back = ep_return(xr, plan, w);
  EXPECT_EQ(max_abs_diff(back, xs), 0.0);
  std::vector<int64_t> odd(size_t(2 * P) + 2, 0);  // 2P + 1 experts: not a multiple of P
  EXPECT_THROW(make_ep_exchange_plan(odd, *w), Error);
}

// ---------------------------------------------------------------- trainer

class ExpertParallel : public ::testing::TestWithParam<std::pair<std::string, std::string>> {};

// EP = 2 over the world (np 2: EP 2; np 4: EP 2 x DP 2) against one process, as DataParallel.
TEST_P(ExpertParallel, ReproducesTheSingleProcessRun) {
  auto w = world_communicator();
  ASSERT_EQ(w->size() % 2, 0);
  const auto& [balance, extra] = GetParam();
  const std::string name = "ep_" + balance + (extra.empty() ? "" : "_global");
  Recipe r = parse_recipe(test::tiny_recipe(test::corpus_dir(*w), balance, extra, 2 * w->size()), name + ".toml");
  Recipe rep = r;
  rep.parallel.ep = 2;
  fs::path base = test::runs_dir(*w);
  fs::path ref = base / ("single_" + name), par = base / ("par_" + name);
  test::PairedRuns rc = test::train_reference_then_parallel(r, rep, ref, par, w);
  ASSERT_EQ(rc.par_rc, kTrainOk);
  if (w->rank() != 0) return;
  ASSERT_EQ(rc.ref_rc, kTrainOk);
  const size_t steps = size_t(test::kMpiSteps);
  test::expect_runs_match(ref, par);
  if (balance == "aux_loss") {
    EXPECT_EQ(test::expect_metric_match(ref, par, "train", "layer_1.aux_unscaled", 1e-5), steps);
  }
  // The phase timers are logged, and the exchange makes dispatch and combine take time.
  for (const char* key : {"ep_dispatch_s", "ep_expert_s", "ep_combine_s"}) {
    auto t = metric(par, "train", key);
    ASSERT_EQ(t.size(), steps) << key;
    for (double v : t) EXPECT_GT(v, 0) << key;
    EXPECT_EQ(metric(ref, "train", key).size(), steps) << key << " (also logged in one process)";
  }

  Checkpoint a = read_checkpoint(checkpoint_dir(ref, test::kMpiSteps)),
             b = read_checkpoint(checkpoint_dir(par, test::kMpiSteps));
  EXPECT_EQ(b.meta.world_size, w->size());
  EXPECT_EQ(b.meta.ep_size, 2);
  EXPECT_EQ(b.meta.dp_size, w->size() / 2);
  EXPECT_EQ(b.tensor("model/blocks.1.ffn.experts.w1").shape(), (Shape{4, 32, 32}));
  const size_t states = test::expect_balancer_states_match(a, b);
  if (balance == "loss_free") {
    EXPECT_GT(states, 0u) << "the loss-free bias must have moved";
  }
  size_t experts = 0;
  for (auto& [k, t] : a.tensors) {
    if (k.rfind("optim/step/", 0) == 0) continue;
    ASSERT_TRUE(b.tensors.count(k)) << k;
    ASSERT_EQ(t.shape(), b.tensor(k).shape()) << k;
    // Parameters to 1e-4 absolute (as DataParallel); moments to 1e-4 of their largest entry.
    double scale = 0;
    for (double v : t.to_double_vector()) scale = std::max(scale, std::fabs(v));
    const double tol = k.rfind("optim/", 0) == 0 ? 1e-4 * scale + 1e-15 : 1e-4;
    EXPECT_LT(max_abs_diff(t, b.tensor(k)), tol) << k;
    experts += k.find(".experts.") != std::string::npos;
  }
  EXPECT_EQ(experts, 3u * 3u * 2u);  // w1 w3 w2 x (params, exp_avg, exp_avg_sq) x 2 MoE layers
  EXPECT_EQ(a.ints.at("data/rank_0/cursor"), b.ints.at("data/rank_0/cursor"));
  EXPECT_EQ(a.ints.at("rng/rank_0/moe_offsets"), b.ints.at("rng/rank_0/moe_offsets"));
}

INSTANTIATE_TEST_SUITE_P(
    TokenLocal, ExpertParallel,
    ::testing::Values(std::make_pair(std::string("none"), std::string()),
                      std::make_pair(std::string("loss_free"), std::string()),
                      std::make_pair(std::string("aux_loss"), std::string("[balance]\naux_variant = \"global\"\n"))),
    [](const auto& info) { return info.param.first + (info.param.second.empty() ? "" : "_global"); });

// Experts are stored under their global index, so a checkpoint written with EP = 2 over the
// world (np 4: EP 2 x DP 2) resumes on 2 ranks (EP 2, or DP 2 with every expert on each rank)
// and in one process, and a 1-process checkpoint resumes at EP 2; every continuation repeats
// the uninterrupted run's losses.
TEST(ExpertParallelResume, CheckpointsMoveBetweenLayouts) {
  auto w = world_communicator();
  const int W = w->size();
  Recipe r1 = parse_recipe(test::tiny_recipe(test::corpus_dir(*w), "loss_free", "", 2 * W), "resume.toml");
  Recipe r2 = r1;
  r2.parallel.ep = 2;
  fs::path base = test::runs_dir(*w);
  fs::path straight = base / "ep_straight", written = base / "ep_written", one = base / "ep_one_to_ep";
  std::vector<std::pair<fs::path, std::string>> targets = {
      {base / "ep_to_1", "1 process"}, {base / "ep_to_2ep", "2 ranks, ep 2"}, {base / "ep_to_2dp", "2 ranks, ep 1"}};
  if (w->rank() == 0) {
    for (const fs::path& d : {straight, written, one}) fs::remove_all(d);
    for (auto& [d, what] : targets) fs::remove_all(d);
    EXPECT_EQ(test::train(r1, straight, make_self_communicator()), kTrainOk);
    EXPECT_EQ(test::train(r1, one, make_self_communicator(), "", 7), kTrainOk);  // steps 1..7 alone
  }
  w->barrier();
  EXPECT_EQ(test::train(r2, written, w, "", 9), kTrainOk);     // steps 1..9 at EP 2 over the world
  EXPECT_EQ(test::train(r2, one, w, "latest", 0), kTrainOk);   // steps 8..20 at EP 2
  if (w->rank() == 0)
    for (auto& [d, what] : targets) fs::copy(written, d, fs::copy_options::recursive);
  w->barrier();
  // Ranks 0 and 1 form a world of two (the others wait in their own group).
  auto two = w->split(w->rank() < 2 ? 0 : 1, w->rank());
  if (w->rank() < 2) {
    EXPECT_EQ(test::train(r2, targets[1].first, two, "latest", 0), kTrainOk);
    EXPECT_EQ(test::train(r1, targets[2].first, two, "latest", 0), kTrainOk);
  }
  if (w->rank() == 0) {
    EXPECT_EQ(test::train(r1, targets[0].first, make_self_communicator(), "latest", 0), kTrainOk);
  }
  w->barrier();
  if (w->rank() != 0) return;
  auto ref = metric(straight, "train", "loss");
  ASSERT_EQ(ref.size(), size_t(test::kMpiSteps));
  targets.emplace_back(one, "written by 1 process, resumed at EP 2");
  Checkpoint a = read_checkpoint(checkpoint_dir(straight, test::kMpiSteps));
  for (auto& [d, what] : targets) {
    auto l = metric(d, "train", "loss");  // rows of both parts (metrics.jsonl is appended on resume)
    ASSERT_EQ(l.size(), size_t(test::kMpiSteps)) << what;
    for (size_t i = 0; i < l.size(); ++i) expect_rel(ref[i], l[i], 1e-5, what + ", step " + std::to_string(i + 1));
    Checkpoint b = read_checkpoint(checkpoint_dir(d, test::kMpiSteps));
    size_t compared = 0;
    for (auto& [k, v] : a.doubles) {
      if (k.rfind("balance/", 0) != 0) continue;
      for (size_t i = 0; i < v.size(); ++i, ++compared)
        EXPECT_NEAR(v[i], b.doubles.at(k)[i], 1e-5 * std::max(1.0, std::fabs(v[i]))) << what << " " << k;
    }
    EXPECT_GT(compared, 0u);
    EXPECT_LT(max_abs_diff(a.tensor("model/blocks.0.ffn.experts.w2"), b.tensor("model/blocks.0.ffn.experts.w2")), 1e-4)
        << what;
  }
}

// ---------------------------------------------------------------- LLEP

TEST(LlepPlan, MovesTheExcessToTheLeastLoadedWithinTheCap) {
  // 4 ranks, 8 experts; rank 0's experts get almost everything.
  const int P = 4;
  const int64_t E = 8;
  std::vector<int64_t> counts(size_t(P * E), 1);
  for (int s = 0; s < P; ++s) counts[size_t(s * E)] = 40 + s, counts[size_t(s * E + 1)] = 13;
  LlepConfig on{true, 1.3, 1.1};
  ExpertWork w = plan_expert_work(counts, P, E, on);
  ASSERT_TRUE(w.rebalanced);
  int64_t total = 0;
  for (int64_t l : w.owner_load) total += l;
  const int64_t cap = int64_t(std::ceil(1.1 * double(total) / P));
  int64_t computed = 0, away = 0;
  for (int q = 0; q < P; ++q) {
    EXPECT_LE(w.compute_load[size_t(q)], cap) << "rank " << q;
    computed += w.compute_load[size_t(q)];
  }
  EXPECT_EQ(computed, total);
  for (int64_t e = 0; e < E; ++e) {
    int64_t n = 0, at = 0;
    for (int s = 0; s < P; ++s) n += counts[size_t(s * E + e)];
    std::vector<int> ranks;
    for (const ExpertChunk& c : w.chunks[size_t(e)]) {
      EXPECT_EQ(c.begin, at) << "expert " << e << ": chunks must tile its rows in order";
      EXPECT_LT(c.begin, c.end + (n == 0)) << "expert " << e;
      at = c.end;
      if (c.rank != e / (E / P)) away += c.end - c.begin;
      EXPECT_EQ(std::count(ranks.begin(), ranks.end(), c.rank), 0) << "expert " << e << " twice on rank " << c.rank;
      ranks.push_back(c.rank);
    }
    EXPECT_EQ(at, n) << "expert " << e;
    EXPECT_EQ(w.chunks[size_t(e)].front().rank, e / (E / P)) << "the owner keeps the head of expert " << e;
  }
  EXPECT_EQ(away, w.moved_rows);
  EXPECT_GT(w.moved_rows, 0);
  // The owner of the hot experts only gives (never above the cap afterwards), the others only take.
  EXPECT_LT(w.compute_load[0], w.owner_load[0]);
  for (int q = 1; q < P; ++q) EXPECT_GE(w.compute_load[size_t(q)], w.owner_load[size_t(q)]);

  // Below the threshold, or with LLEP off, every row stays with its owner.
  ExpertWork off = plan_expert_work(counts, P, E, LlepConfig{});
  EXPECT_FALSE(off.rebalanced);
  EXPECT_EQ(off.compute_load, off.owner_load);
  std::vector<int64_t> even(size_t(P * E), 5);
  even[0] = 6;
  EXPECT_FALSE(plan_expert_work(even, P, E, on).rebalanced);
  EXPECT_THROW(plan_expert_work(counts, P, E + 1, on), Error);
}

TEST(ExpertParallelLayer, LlepOnASkewedRouterEqualsTheReplicatedLayerWhileMovingWork) {
  auto w = world_communicator();
  for (int ep : ep_sizes(w->size())) {
    SCOPED_TRACE("ep = " + std::to_string(ep));
    ProcessGroups g = make_process_groups(w, ep, 4, true);
    ModelConfig c = layer_config(4, 2, 5, 7);
    c.moe.num_shared_experts = 1;
    expect_ep_layer_matches(g, c, to_experts_0_and_1, LlepConfig{true, 1.3, 1.1});
    // The same layer shows that work moved: rank 0 computes at most cap rows of its experts.
    Philox rng(17, 1);
    MoeLayer layer(c, 1, rng, DType::f64, g.ep);
    layer.set_llep(LlepConfig{true, 1.3, 1.1});
    layer.set_select_override(to_experts_0_and_1);
    NoGradGuard ng;
    layer.forward(randn({2, 3, 5}, 300 + uint64_t(w->rank())));
    ASSERT_TRUE(layer.last_ep_plan());
    const ExpertWork& work = layer.last_ep_plan()->work;
    EXPECT_TRUE(work.rebalanced);
    int64_t total = 0, busiest = 0;
    for (int64_t l : work.owner_load) total += l;
    for (int64_t l : work.compute_load) busiest = std::max(busiest, l);
    EXPECT_EQ(total, 2 * 6 * ep);  // 6 tokens x k = 2 per rank of the group
    EXPECT_LE(busiest, int64_t(std::ceil(1.1 * double(total) / ep)));
    EXPECT_GE(work.moved_rows, total / 4);
  }
}

// LLEP at threshold 1 (it moves work whenever the ranks' loads differ) over EP 2 reproduces one
// process, as ExpertParallel does without it.
TEST(ExpertParallelLlep, ReproducesTheSingleProcessRun) {
  auto w = world_communicator();
  Recipe r = parse_recipe(test::tiny_recipe(test::corpus_dir(*w), "none", "", 2 * w->size()), "llep.toml");
  r.train.steps = 10;
  r.eval.every = 5;
  Recipe rl = r;
  rl.parallel.ep = 2;
  rl.parallel.llep = true;
  rl.parallel.llep_threshold = 1.0;
  fs::path base = test::runs_dir(*w);
  fs::path ref = base / "llep_single", par = base / "llep_par";
  test::PairedRuns rc = test::train_reference_then_parallel(r, rl, ref, par, w);
  ASSERT_EQ(rc.par_rc, kTrainOk);
  if (w->rank() != 0) return;
  ASSERT_EQ(rc.ref_rc, kTrainOk);
  EXPECT_EQ(test::expect_metric_match(ref, par, "train", "loss", 1e-5), 10u);
  test::expect_metric_match(ref, par, "eval", "val_loss", 1e-5);
  auto moved = metric(par, "train", "llep_moved_rows");
  ASSERT_EQ(moved.size(), 10u);
  double sum = 0;
  for (double m : moved) sum += m;
  EXPECT_GT(sum, 0) << "LLEP never moved work";
  Checkpoint a = read_checkpoint(checkpoint_dir(ref, 10)), b = read_checkpoint(checkpoint_dir(par, 10));
  test::expect_model_tensors_match(a, b, 1e-4);
}
