// Data parallelism end to end under mpirun: DP over the world reproduces the single-process run
// of the same recipe (losses over 20 steps to 1e-5 relative, balancer states, parameters), and
// ranks whose recipes differ are refused at start-up with a message naming the rank.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "checkpoints/checkpoint.h"
#include "core/error.h"
#include "core/rng.h"
#include "data/text_corpus.h"
#include "parallel/communicator.h"
#include "recipes/recipe.h"
#include "recipes/trainer.h"
#include "tests/mpi/mpi_train_helpers.h"

namespace fs = std::filesystem;
using namespace moe;

namespace {
using test::corpus_dir;
using test::expect_rel;
using test::metric;
using test::tiny_recipe;
using test::train;
constexpr int64_t kSteps = test::kMpiSteps;
}  // namespace

class DataParallel : public ::testing::TestWithParam<std::pair<std::string, std::string>> {};

TEST_P(DataParallel, ReproducesTheSingleProcessRun) {
  auto w = world_communicator();
  ASSERT_GE(w->size(), 2);
  const auto& [balance, extra] = GetParam();
  const std::string name = balance + (extra.empty() ? "" : "_global");
  Recipe r = parse_recipe(tiny_recipe(corpus_dir(*w), balance, extra), name + ".toml");
  fs::path base = test::runs_dir(*w);
  fs::path ref = base / ("single_" + name), dp = base / ("dp_" + name);
  test::PairedRuns rc = test::train_reference_then_parallel(r, r, ref, dp, w);
  ASSERT_EQ(rc.par_rc, kTrainOk);
  if (w->rank() != 0) return;  // rank 0 compares the two run directories
  ASSERT_EQ(rc.ref_rc, kTrainOk);

  test::expect_runs_match(ref, dp);

  if (balance == "aux_loss") {  // the global-variant term, with f_i from the loads of both ranks
    EXPECT_EQ(test::expect_metric_match(ref, dp, "train", "layer_1.aux_unscaled", 1e-5), size_t(kSteps));
  }

  Checkpoint a = read_checkpoint(checkpoint_dir(ref, kSteps)), b = read_checkpoint(checkpoint_dir(dp, kSteps));
  EXPECT_EQ(b.meta.world_size, w->size());
  const size_t states = test::expect_balancer_states_match(a, b);
  if (balance == "loss_free") {
    EXPECT_GT(states, 0u) << "the loss-free bias must have moved";
  }
  test::expect_model_tensors_match(a, b, 1e-4);
  EXPECT_EQ(a.ints.at("data/rank_0/cursor"), b.ints.at("data/rank_0/cursor"));
  EXPECT_EQ(a.ints.at("rng/rank_0/moe_offsets"), b.ints.at("rng/rank_0/moe_offsets"));
}

INSTANTIATE_TEST_SUITE_P(
    TokenLocal, DataParallel,
    ::testing::Values(std::make_pair(std::string("none"), std::string()),
                      std::make_pair(std::string("loss_free"), std::string()),
                      std::make_pair(std::string("aux_loss"), std::string("[balance]\naux_variant = \"global\"\n"))),
    [](const auto& info) { return info.param.first + (info.param.second.empty() ? "" : "_global"); });

TEST(DataParallelStartup, RanksWithDifferentRecipesAreRefused) {
  auto w = world_communicator();
  Recipe r = parse_recipe(tiny_recipe(corpus_dir(*w), "none"), "tiny.toml");
  r.train.seed = 5 + (w->rank() == 1 ? 1 : 0);
  fs::path dir = test::runs_dir(*w) / "mismatch";
  test::expect_training_refused(r, dir, w, "rank 1 runs a different recipe");
}

TEST(DataParallelStartup, ExpertParallelSizeMustDivideTheWorld) {
  auto w = world_communicator();
  Recipe r = parse_recipe(tiny_recipe(corpus_dir(*w), "none"), "tiny.toml");
  r.parallel.ep = w->size() + 1;
  r.model.moe.num_experts = 4 * (w->size() + 1);
  fs::path dir = test::runs_dir(*w) / "bad_ep";
  test::expect_training_refused(r, dir, w, "parallel.ep");
}

TEST(DataParallelStartup, GlobalBatchMustSplitOverRanks) {
  auto w = world_communicator();
  Recipe r = parse_recipe(tiny_recipe(corpus_dir(*w), "none"), "tiny.toml");
  r.train.batch_size = 2;  // 2 micro-batches x 2 ranks do not divide 2
  fs::path dir = test::runs_dir(*w) / "bad_batch";
  test::expect_training_refused(r, dir, w, "train.batch_size");
}

// The data cursor and RNG offsets are global, so a checkpoint written at DP = 2 resumes in one
// process (and a 1-process checkpoint at DP = 2), continuing the uninterrupted run's losses.
TEST(DataParallelResume, CheckpointsMoveBetweenWorldSizes) {
  auto w = world_communicator();
  Recipe r = parse_recipe(tiny_recipe(corpus_dir(*w), "loss_free"), "resume.toml");
  fs::path base = test::runs_dir(*w);
  fs::path straight = base / "resume_straight", dp_to_1 = base / "resume_dp_to_1", one_to_dp = base / "resume_1_to_dp";
  auto run = [&](const fs::path& dir, std::shared_ptr<Communicator> c, const std::string& resume, int64_t stop) {
    std::ostringstream os;
    TrainOptions o;
    o.run_dir = dir.string();
    o.out = &os;
    o.comm = std::move(c);
    o.resume = resume;
    o.stop_after_step = stop;
    return run_training(r, o);
  };
  if (w->rank() == 0) {
    fs::remove_all(straight);
    fs::remove_all(dp_to_1);
    fs::remove_all(one_to_dp);
    EXPECT_EQ(run(straight, make_self_communicator(), "", 0), kTrainOk);
    EXPECT_EQ(run(one_to_dp, make_self_communicator(), "", 7), kTrainOk);  // first 7 steps alone
  }
  w->barrier();
  EXPECT_EQ(run(dp_to_1, w, "", 9), kTrainOk);           // first 9 steps at DP = 2
  EXPECT_EQ(run(one_to_dp, w, "latest", 0), kTrainOk);   // steps 8..20 at DP = 2
  if (w->rank() != 0) return;
  EXPECT_EQ(run(dp_to_1, make_self_communicator(), "latest", 0), kTrainOk);  // steps 10..20 alone
  auto ref = metric(straight, "train", "loss");
  ASSERT_EQ(ref.size(), size_t(kSteps));
  for (const fs::path& d : {dp_to_1, one_to_dp}) {
    auto l = metric(d, "train", "loss");  // rows of both parts (metrics.jsonl is appended on resume)
    ASSERT_EQ(l.size(), size_t(kSteps)) << d;
    for (size_t i = 0; i < l.size(); ++i) expect_rel(ref[i], l[i], 1e-5, d.filename().string() + " step " + std::to_string(i + 1));
  }
  Checkpoint a = read_checkpoint(checkpoint_dir(straight, kSteps)), b = read_checkpoint(checkpoint_dir(dp_to_1, kSteps));
  size_t compared = 0;
  for (auto& [k, v] : a.doubles) {
    if (k.rfind("balance/", 0) != 0) continue;
    for (size_t i = 0; i < v.size(); ++i, ++compared) {
      EXPECT_NEAR(v[i], b.doubles.at(k)[i], 1e-5 * std::max(1.0, std::fabs(v[i]))) << k;
    }
  }
  EXPECT_GT(compared, 0u);
}

// Strategies coupled across the batch, with balance.scope = "local" (the global scope is tested in
// global_strategies_mpi_test.cpp), route each rank's local micro-batch on its own. What that
// computes, exactly: DP = W with grad_accum A is the single process with grad_accum A x W (the
// same windows, one local micro-batch each, in the same order of jitter draws), for every
// strategy without state changed inside select().
class DataParallelRankLocal : public ::testing::TestWithParam<std::pair<std::string, std::string>> {};

TEST_P(DataParallelRankLocal, EqualsOneProcessWithWTimesTheMicroBatches) {
  auto w = world_communicator();
  const auto& [balance, extra] = GetParam();
  const std::string name = "local_" + balance;
  Recipe r = parse_recipe(tiny_recipe(corpus_dir(*w), balance, extra), name + ".toml");
  r.train.steps = 10;
  r.eval.every = 0;
  Recipe single = r;
  single.train.grad_accum = r.train.grad_accum * w->size();
  fs::path base = test::runs_dir(*w);
  fs::path ref = base / ("single_" + name), dp = base / ("dp_" + name);
  int ref_rc = 0;
  if (w->rank() == 0) {
    fs::remove_all(ref);
    fs::remove_all(dp);
    ref_rc = train(single, ref, make_self_communicator());
  }
  w->barrier();
  ASSERT_EQ(train(r, dp, w), kTrainOk);
  if (w->rank() != 0) return;
  ASSERT_EQ(ref_rc, kTrainOk);
  auto la = metric(ref, "train", "loss"), lb = metric(dp, "train", "loss");
  ASSERT_EQ(la.size(), 10u);
  ASSERT_EQ(lb.size(), 10u);
  for (size_t i = 0; i < la.size(); ++i) expect_rel(la[i], lb[i], 1e-5, balance + " loss at step " + std::to_string(i + 1));
  EXPECT_LT(la.back(), la.front());
}

INSTANTIATE_TEST_SUITE_P(
    Coupled, DataParallelRankLocal,
    ::testing::Values(std::make_pair(std::string("aux_loss"),
                                     std::string("[balance]\naux_variant = \"micro_batch\"\nscope = \"local\"\n")),
                      std::make_pair(std::string("sinkhorn"), std::string("[balance]\nscope = \"local\"\n")),
                      std::make_pair(std::string("expert_choice"), std::string("[balance]\nscope = \"local\"\n"))),
    [](const auto& info) { return info.param.first; });

// BIP in paper order with balance.scope = "local" updates its dual prices q inside select() from
// the batch it routes, so at DP = 2 each rank's q follows its own local batches: the ranks' states drift apart, and the
// trainer says so on the console (checkpoints keep rank 0's q). Token-local strategies do not.
TEST(DataParallelRankLocalState, BipStateDriftsAndIsReported) {
  auto w = world_communicator();
  for (std::string balance : {"bip", "loss_free"}) {
    Recipe r = parse_recipe(tiny_recipe(corpus_dir(*w), balance, "[balance]\nscope = \"local\"\n"), "drift.toml");
    r.train.steps = 4;
    r.eval.every = 0;
    fs::path dir = test::runs_dir(*w) / ("drift_" + balance);
    if (w->rank() == 0) fs::remove_all(dir);
    w->barrier();
    std::ostringstream os;
    TrainOptions o;
    o.run_dir = dir.string();
    o.out = &os;
    o.comm = w;
    ASSERT_EQ(run_training(r, o), kTrainOk);
    if (w->rank() != 0) continue;
    bool noted = os.str().find("balancer state differs across data-parallel ranks") != std::string::npos;
    EXPECT_EQ(noted, balance == "bip") << balance << ":\n" << os.str();
  }
}
