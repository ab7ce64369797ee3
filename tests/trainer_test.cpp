// The trainer end to end on a small prepared text corpus: exact resume (bit for bit, also after
// SIGTERM), NaN loss handling, and bad input (missing data, unwritable run dir, cuda on CPU).
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "checkpoints/checkpoint.h"
#include "core/rng.h"
#include "data/text_corpus.h"
#include "recipes/recipe.h"
#include "recipes/trainer.h"
#include "tests/tiny_corpus.h"
#include "tests/train_run_util.h"

namespace fs = std::filesystem;
using namespace moe;

namespace {

const std::string& corpus_dir() {
  static const std::string dir = test::prepare_tiny_corpus("trainer_corpus", 7);
  return dir;
}

std::string tiny_recipe(const std::string& balance) {
  return "[model]\nvocab_size = 256\nd_model = 32\nn_layers = 2\nn_heads = 2\n"
         "[moe]\nenabled = true\nnum_experts = 4\nexpert_hidden = 32\n"
         "[router]\ntop_k = 2\nbalance = \"" + balance + "\"\nz_loss = 1e-3\njitter = 0.01\n"
         "[data]\ndir = \"" + corpus_dir() + "\"\n"
         "[schedule]\nwarmup_steps = 2\n"
         "[train]\nsteps = 8\nbatch_size = 4\nseq_len = 16\ngrad_accum = 2\nseed = 5\n"
         "[eval]\nevery = 4\nbatches = 2\n[log]\nevery = 1\n[checkpoint]\nevery = 0\nkeep = 2\n";
}

// The train rows of metrics.jsonl without the timing fields.
std::vector<std::string> loss_rows(const fs::path& dir) {
  std::ifstream in(dir / "metrics.jsonl");
  std::vector<std::string> rows;
  std::string line;
  while (std::getline(in, line)) {
    // Drop fields that measure time, keep everything that describes the run's numbers.
    std::string out;
    std::stringstream ss(line);
    std::string field;
    while (std::getline(ss, field, ','))
      if (field.find("tokens_per_s") == std::string::npos && field.find("_s\":") == std::string::npos)
        out += field + ",";  // tokens_per_s and the seconds of the MoE phases (ep_*_s)
    rows.push_back(out);
  }
  return rows;
}

void expect_same_checkpoint(const fs::path& a, const fs::path& b) {
  Checkpoint x = read_checkpoint(a), y = read_checkpoint(b);
  EXPECT_EQ(x.meta.step, y.meta.step);
  ASSERT_EQ(x.tensors.size(), y.tensors.size());
  for (auto& [name, t] : x.tensors) {
    const Tensor& u = y.tensor(name);
    ASSERT_EQ(t.shape(), u.shape()) << name;
    size_t bytes = size_t(t.numel()) * dtype_size(t.dtype());
    EXPECT_EQ(std::memcmp(t.contiguous().raw_data(), u.contiguous().raw_data(), bytes), 0) << name << " differs";
  }
  EXPECT_EQ(x.doubles, y.doubles);  // balancer states, bit for bit
  EXPECT_EQ(x.ints, y.ints);        // RNG offsets and data cursor
}

}  // namespace

class TrainerResume : public ::testing::TestWithParam<std::string> {};

TEST_P(TrainerResume, StraightAndInterruptedRunsAreBitwiseEqual) {
  Recipe r = parse_recipe(tiny_recipe(GetParam()), "tiny.toml");
  fs::path straight = test::fresh_run_dir("straight_" + GetParam()), split = test::fresh_run_dir("split_" + GetParam());
  ASSERT_EQ(test::train_quietly(r, straight), kTrainOk);
  ASSERT_EQ(test::train_quietly(r, split, "", 4), kTrainOk);
  std::string console;
  ASSERT_EQ(test::train_quietly(r, split, "latest", 0, &console), kTrainOk);
  EXPECT_NE(console.find("resuming from"), std::string::npos);
  EXPECT_NE(console.find("at step 4"), std::string::npos) << console;
  auto a = loss_rows(straight), b = loss_rows(split);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i], b[i]) << "metrics.jsonl row " << i;
  expect_same_checkpoint(checkpoint_dir(straight, 8), checkpoint_dir(split, 8));
}

INSTANTIATE_TEST_SUITE_P(Strategies, TrainerResume, ::testing::Values("aux_loss", "loss_free", "bip", "ssr"));

// The trainer hands clipping's factor to AdamW (AdamW::step(lr, grad_scale)): a bound no step
// reaches changes nothing, bit for bit, against no clipping; a bound every step exceeds changes
// every step after the first (the same first loss, then different ones).
TEST(Trainer, GradClipIsAppliedAndAnUnreachedBoundChangesNothing) {
  auto run = [](const std::string& clip) {
    Recipe r = parse_recipe(tiny_recipe("aux_loss") + "[optim]\ngrad_clip = " + clip + "\n", "clip.toml");
    fs::path dir = test::fresh_run_dir("grad_clip_" + clip);
    EXPECT_EQ(test::train_quietly(r, dir), kTrainOk) << clip;
    return loss_rows(dir);
  };
  const auto off = run("0.0"), unreached = run("1e9"), tight = run("1e-3");
  ASSERT_EQ(off.size(), unreached.size());
  for (size_t i = 0; i < off.size(); ++i) EXPECT_EQ(off[i], unreached[i]) << "metrics.jsonl row " << i;
  auto train_losses = [](const std::vector<std::string>& rows) {  // the "loss": field of each train row
    std::vector<std::string> out;
    for (const std::string& row : rows)
      if (const size_t at = row.find("\"loss\":"); row.find("\"kind\": \"train\"") != std::string::npos &&
                                                    at != std::string::npos)
        out.push_back(row.substr(at, row.find(',', at) - at));
    return out;
  };
  const auto a = train_losses(off), b = train_losses(tight);
  ASSERT_EQ(a.size(), 8u);
  ASSERT_EQ(b.size(), 8u);
  EXPECT_EQ(a[0], b[0]) << "the first step's loss comes before any update";
  for (size_t i = 1; i < a.size(); ++i) EXPECT_NE(a[i], b[i]) << "step " << i + 1 << ": clipping changed nothing";
}

TEST(Trainer, SigtermCheckpointsAndResumesExactly) {
  // A real process: build/moetrain train, SIGTERM once training has started.
  fs::path dir = test::fresh_run_dir("sigterm"), straight = test::fresh_run_dir("sigterm_straight");
  fs::create_directories(dir);
  fs::path recipe = dir.parent_path() / "sigterm.toml";
  std::ofstream(recipe) << tiny_recipe("loss_free") << "";
  std::string exe = std::string(MOE_BINARY_DIR) + "/moetrain";
  std::vector<std::string> sets = {"--set", "train.steps=30"};

  int pipefd[2];
  ASSERT_EQ(pipe(pipefd), 0);
  pid_t pid = fork();
  if (pid == 0) {
    dup2(pipefd[1], 1);
    close(pipefd[0]);
    execl(exe.c_str(), exe.c_str(), "train", recipe.c_str(), "--set", "train.steps=30", "--run-dir", dir.c_str(),
          (char*)nullptr);
    _exit(127);
  }
  close(pipefd[1]);
  FILE* out = fdopen(pipefd[0], "r");
  char line[4096];
  bool started = false;
  std::string all;
  while (fgets(line, sizeof line, out)) {
    all += line;
    if (!started && std::strncmp(line, "step", 4) == 0) {
      started = true;
      kill(pid, SIGTERM);
    }
  }
  fclose(out);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(started) << all;
  ASSERT_TRUE(WIFEXITED(status)) << all;
  EXPECT_EQ(WEXITSTATUS(status), 0) << all;
  EXPECT_NE(all.find("received SIGTERM: checkpoint written at step"), std::string::npos) << all;
  auto latest = find_latest_checkpoint(dir);
  ASSERT_TRUE(latest.has_value());
  EXPECT_LT(read_checkpoint(*latest).meta.step, 30);

  Recipe r = load_recipe(recipe.string(), {"train.steps=30"});
  ASSERT_EQ(test::train_quietly(r, dir, "latest"), kTrainOk);
  ASSERT_EQ(test::train_quietly(r, straight), kTrainOk);
  auto a = loss_rows(straight), b = loss_rows(dir);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i], b[i]) << "metrics.jsonl row " << i;
  expect_same_checkpoint(checkpoint_dir(straight, 30), checkpoint_dir(dir, 30));
}

// checkpoint.at_end = false (throughput sweeps of big models): no checkpoint at the last step,
// but checkpoint.every still writes its own; the default writes the last step's.
TEST(Trainer, CheckpointAtEndCanBeTurnedOff) {
  fs::path none = test::fresh_run_dir("at_end_off"), every = test::fresh_run_dir("at_end_off_every"),
           dflt = test::fresh_run_dir("at_end_default");
  ASSERT_EQ(test::train_quietly(parse_recipe(tiny_recipe("none"), "tiny.toml", {"checkpoint.at_end=false"}), none),
            kTrainOk);
  EXPECT_FALSE(find_latest_checkpoint(none).has_value());
  ASSERT_EQ(test::train_quietly(parse_recipe(tiny_recipe("none"), "tiny.toml",
                                             {"checkpoint.at_end=false", "checkpoint.every=3"}), every),
            kTrainOk);
  auto latest = find_latest_checkpoint(every);
  ASSERT_TRUE(latest.has_value());
  EXPECT_EQ(read_checkpoint(*latest).meta.step, 6);  // steps 3 and 6 of 8, not 8
  ASSERT_EQ(test::train_quietly(parse_recipe(tiny_recipe("none"), "tiny.toml"), dflt), kTrainOk);
  latest = find_latest_checkpoint(dflt);
  ASSERT_TRUE(latest.has_value());
  EXPECT_EQ(read_checkpoint(*latest).meta.step, 8);
}

// Every train row says where its steps' time went: forward, backward and optimizer seconds.
TEST(Trainer, TrainRowsHoldTheStepParts) {
  fs::path dir = test::fresh_run_dir("step_parts");
  ASSERT_EQ(test::train_quietly(parse_recipe(tiny_recipe("aux_loss"), "tiny.toml"), dir), kTrainOk);
  std::ifstream in(dir / "metrics.jsonl");
  std::string line;
  int rows = 0;
  while (std::getline(in, line)) {
    if (line.find("\"kind\": \"train\"") == std::string::npos && line.find("\"kind\":\"train\"") == std::string::npos)
      continue;
    ++rows;
    for (const char* key : {"forward_s", "backward_s", "optimizer_s"}) {
      const size_t at = line.find(std::string("\"") + key + "\":");
      ASSERT_NE(at, std::string::npos) << key << " missing in " << line;
      const double v = std::stod(line.substr(line.find(':', at) + 1));
      EXPECT_GT(v, 0.0) << key << " in " << line;
      EXPECT_LT(v, 60.0) << key << " in " << line;
    }
  }
  EXPECT_EQ(rows, 8);  // log.every 1
}

TEST(Trainer, NanLossStopsAndKeepsTheLastGoodCheckpoint) {
  Recipe r = parse_recipe(tiny_recipe("aux_loss"), "tiny.toml",
                          {"optim.lr=1e30", "optim.min_lr=1e29", "optim.grad_clip=0", "checkpoint.every=1",
                           "schedule.kind=\"constant\""});
  fs::path dir = test::fresh_run_dir("nan");
  std::string console;
  EXPECT_EQ(test::train_quietly(r, dir, "", 0, &console), kTrainDiverged) << console;
  EXPECT_NE(console.find("is not finite"), std::string::npos) << console;
  auto latest = find_latest_checkpoint(dir);
  ASSERT_TRUE(latest.has_value()) << console;
  EXPECT_NE(console.find(latest->string()), std::string::npos) << console;
  Checkpoint c = read_checkpoint(*latest);  // intact and readable
  EXPECT_GE(c.meta.step, 1);
}

TEST(Trainer, BadInputGivesOneClearError) {
  auto error_of = [](const Recipe& r, const fs::path& dir) -> std::string {
    try {
      test::train_quietly(r, dir);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  Recipe r = parse_recipe(tiny_recipe("none"), "tiny.toml", {"data.dir=\"/nonexistent/brown\""});
  std::string e = error_of(r, test::fresh_run_dir("bad_data"));
  EXPECT_NE(e.find("/nonexistent/brown"), std::string::npos) << e;
  EXPECT_NE(e.find("moetrain prepare"), std::string::npos) << e;

  fs::path file = fs::path(MOE_BINARY_DIR) / "test_runs" / "a_file";
  fs::create_directories(file.parent_path());
  std::ofstream(file) << "x";
  e = error_of(parse_recipe(tiny_recipe("none"), "tiny.toml"), file / "run");
  EXPECT_NE(e.find("cannot create the run directory"), std::string::npos) << e;

  e = error_of(parse_recipe(tiny_recipe("none"), "tiny.toml", {"train.device=cuda"}), test::fresh_run_dir("cuda"));
  EXPECT_NE(e.find("train.device"), std::string::npos) << e;

  e = error_of(parse_recipe(tiny_recipe("none"), "tiny.toml", {"parallel.llep=true"}), test::fresh_run_dir("llep"));
  EXPECT_NE(e.find("parallel.llep"), std::string::npos) << e;

  e = error_of(parse_recipe(tiny_recipe("none"), "tiny.toml", {"model.vocab_size=100"}), test::fresh_run_dir("vocab"));
  EXPECT_NE(e.find("model.vocab_size"), std::string::npos) << e;

  fs::path empty = test::fresh_run_dir("no_ckpt");
  std::ostringstream os;
  TrainOptions o;
  o.run_dir = empty.string();
  o.resume = "latest";
  o.out = &os;
  try {
    run_training(parse_recipe(tiny_recipe("none"), "tiny.toml"), o);
    FAIL() << "resume without a checkpoint did not throw";
  } catch (const Error& err) {
    EXPECT_NE(std::string(err.what()).find("no complete checkpoint"), std::string::npos) << err.what();
  }
}
