// Shared pieces of the trainer-level MPI tests: the tiny corpus and recipe, a training call on
// a given communicator, and readers of a run's metrics.jsonl.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "parallel/communicator.h"
#include "recipes/recipe.h"
#include "recipes/trainer.h"
#include "tests/tiny_corpus.h"

namespace moe::test {

inline constexpr int64_t kMpiSteps = 20;

// The tiny corpus of tests/tiny_corpus.h, prepared once by rank 0 of `w` (one corpus per world
// size: ctest may run the np 2 and np 4 jobs side by side).
inline std::string corpus_dir(Communicator& w) {
  const std::string name = "mpi_corpus_np" + std::to_string(w.size());
  std::string dir = (std::filesystem::path(MOE_BINARY_DIR) / "test_data" / name / "prepared").string();
  if (w.rank() == 0) dir = prepare_tiny_corpus(name, 7);
  w.barrier();
  return dir;
}

// Where a test's run directories go, one folder per world size (see corpus_dir).
inline std::filesystem::path runs_dir(Communicator& w) {
  return std::filesystem::path(MOE_BINARY_DIR) / "test_runs" / ("mpi_np" + std::to_string(w.size()));
}

// tests/trainer_test.cpp's tiny model (jitter on: the parallel trainer must reproduce its
// draws) with a global batch of `batch` sequences in 2 micro-batches.
inline std::string tiny_recipe(const std::string& data, const std::string& balance, const std::string& extra = "",
                               int batch = 4) {
  return "[model]\nvocab_size = 256\nd_model = 32\nn_layers = 2\nn_heads = 2\n"
         "[moe]\nenabled = true\nnum_experts = 4\nexpert_hidden = 32\n"
         "[router]\ntop_k = 2\nbalance = \"" + balance + "\"\nz_loss = 1e-3\njitter = 0.01\n" + extra +
         "[data]\ndir = \"" + data + "\"\n"
         "[schedule]\nwarmup_steps = 2\n"
         "[train]\nsteps = " + std::to_string(kMpiSteps) + "\nbatch_size = " + std::to_string(batch) +
         "\nseq_len = 16\ngrad_accum = 2\nseed = 5\n"
         "[eval]\nevery = 10\nbatches = 2\n[log]\nevery = 1\n[checkpoint]\nevery = 0\nkeep = 1\n";
}

inline int train(const Recipe& r, const std::filesystem::path& dir, std::shared_ptr<Communicator> comm,
                 const std::string& resume = "", int64_t stop_after = 0, std::ostream* out = nullptr) {
  std::ostringstream os;
  TrainOptions o;
  o.run_dir = dir.string();
  o.out = out ? out : &os;
  o.comm = std::move(comm);
  o.resume = resume;
  o.stop_after_step = stop_after;
  return run_training(r, o);
}

// Values of `key` in the rows of metrics.jsonl whose kind is `kind`.
inline std::vector<double> metric(const std::filesystem::path& dir, const std::string& kind, const std::string& key) {
  std::ifstream in(dir / "metrics.jsonl");
  std::vector<double> out;
  std::string line;
  while (std::getline(in, line)) {
    if (line.find("\"kind\":\"" + kind + "\"") == std::string::npos &&
        line.find("\"kind\": \"" + kind + "\"") == std::string::npos)
      continue;
    auto p = line.find("\"" + key + "\":");
    if (p == std::string::npos) continue;
    out.push_back(std::strtod(line.c_str() + p + key.size() + 3, nullptr));
  }
  return out;
}

inline void expect_rel(double a, double b, double rel, const std::string& what) {
  EXPECT_LE(std::fabs(a - b), rel * std::max(std::fabs(a), std::fabs(b)) + 1e-9) << what << ": " << a << " vs " << b;
}

// A parallel run `other` against the single-process run `ref` of the same recipe (kMpiSteps
// steps, log every step, evals at 10 and 20): train losses to 1e-5 relative (and they must fall,
// so two constants cannot pass), grad norms to 1e-4, eval losses to 1e-5, and layer 1's MaxVio of
// the all-reduced loads to 1e-9.
inline void expect_runs_match(const std::filesystem::path& ref, const std::filesystem::path& other) {
  const size_t steps = size_t(kMpiSteps);
  auto la = metric(ref, "train", "loss"), lb = metric(other, "train", "loss");
  ASSERT_EQ(la.size(), steps);
  ASSERT_EQ(lb.size(), steps);
  for (size_t i = 0; i < steps; ++i) expect_rel(la[i], lb[i], 1e-5, "train loss at step " + std::to_string(i + 1));
  EXPECT_LT(la.back(), la.front() - 0.1);
  auto ga = metric(ref, "train", "grad_norm"), gb = metric(other, "train", "grad_norm");
  ASSERT_EQ(ga.size(), gb.size());
  for (size_t i = 0; i < ga.size(); ++i) expect_rel(ga[i], gb[i], 1e-4, "grad_norm at step " + std::to_string(i + 1));
  auto va = metric(ref, "eval", "val_loss"), vb = metric(other, "eval", "val_loss");
  ASSERT_EQ(va.size(), 2u);
  ASSERT_EQ(vb.size(), 2u);
  for (size_t i = 0; i < va.size(); ++i) expect_rel(va[i], vb[i], 1e-5, "val_loss " + std::to_string(i));
  auto ma = metric(ref, "train", "layer_1.maxvio"), mb = metric(other, "train", "layer_1.maxvio");
  ASSERT_EQ(ma.size(), steps);
  ASSERT_EQ(mb.size(), steps);
  for (size_t i = 0; i < steps; ++i) expect_rel(ma[i], mb[i], 1e-9, "layer_1.maxvio (all-reduced loads)");
}

}  // namespace moe::test
