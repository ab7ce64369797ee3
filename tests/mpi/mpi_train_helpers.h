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

#include "checkpoints/checkpoint.h"
#include "core/error.h"
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

// The values of `key` in the `kind` rows of two runs, equal to `rel`; returns the row count.
inline size_t expect_metric_match(const std::filesystem::path& ref, const std::filesystem::path& other,
                                  const std::string& kind, const std::string& key, double rel) {
  auto a = metric(ref, kind, key), b = metric(other, kind, key);
  EXPECT_EQ(a.size(), b.size()) << key;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) expect_rel(a[i], b[i], rel, key + " row " + std::to_string(i + 1));
  return a.size();
}

// A parallel run `other` against the single-process run `ref` of the same recipe (kMpiSteps
// steps, log every step, evals at 10 and 20): train losses to 1e-5 relative (and they must fall,
// so two constants cannot pass), grad norms to 1e-4, eval losses to 1e-5, and layer 1's MaxVio of
// the all-reduced loads to 1e-9.
inline void expect_runs_match(const std::filesystem::path& ref, const std::filesystem::path& other) {
  const size_t steps = size_t(kMpiSteps);
  EXPECT_EQ(expect_metric_match(ref, other, "train", "loss", 1e-5), steps);
  auto la = metric(ref, "train", "loss");
  ASSERT_FALSE(la.empty());
  EXPECT_LT(la.back(), la.front() - 0.1);
  expect_metric_match(ref, other, "train", "grad_norm", 1e-4);
  EXPECT_EQ(expect_metric_match(ref, other, "eval", "val_loss", 1e-5), 2u);
  EXPECT_EQ(expect_metric_match(ref, other, "train", "layer_1.maxvio", 1e-9), steps);
}

// Return codes of train_reference_then_parallel (ref_rc is 0 on ranks other than 0).
struct PairedRuns {
  int ref_rc = 0, par_rc = 0;
};

// Rank 0 trains `single` alone into `ref` (the one-process reference, a self communicator), then
// every rank of `w` trains `parallel` into `par`. Both directories start empty.
inline PairedRuns train_reference_then_parallel(const Recipe& single, const Recipe& parallel,
                                                const std::filesystem::path& ref, const std::filesystem::path& par,
                                                std::shared_ptr<Communicator> w, std::ostream* par_out = nullptr) {
  PairedRuns rc;
  if (w->rank() == 0) {
    std::filesystem::remove_all(ref);
    std::filesystem::remove_all(par);
    rc.ref_rc = train(single, ref, make_self_communicator());
  }
  w->barrier();
  rc.par_rc = train(parallel, par, w, "", 0, par_out);
  return rc;
}

// Every balance/* state of checkpoint `a` is in `b` with the same values (1e-5 relative to
// max(1, |value|)); returns how many of a's entries are non-zero (a state that never moved is 0).
inline size_t expect_balancer_states_match(const Checkpoint& a, const Checkpoint& b) {
  size_t nonzero = 0;
  for (auto& [k, v] : a.doubles) {
    if (k.rfind("balance/", 0) != 0) continue;
    EXPECT_TRUE(b.doubles.count(k)) << k;
    if (!b.doubles.count(k)) continue;
    const auto& u = b.doubles.at(k);
    EXPECT_EQ(v.size(), u.size()) << k;
    for (size_t i = 0; i < std::min(v.size(), u.size()); ++i) {
      EXPECT_NEAR(v[i], u[i], 1e-5 * std::max(1.0, std::fabs(v[i]))) << k << "[" << i << "]";
      nonzero += v[i] != 0;
    }
  }
  return nonzero;
}

inline double max_abs_diff(const Tensor& a, const Tensor& b) {
  std::vector<double> x = a.to_double_vector(), y = b.to_double_vector();
  EXPECT_EQ(x.size(), y.size());
  double worst = 0;
  for (size_t i = 0; i < std::min(x.size(), y.size()); ++i) worst = std::max(worst, std::fabs(x[i] - y[i]));
  return worst;
}

// Every model/* tensor of checkpoint `a` equals b's to `tol` absolute.
inline void expect_model_tensors_match(const Checkpoint& a, const Checkpoint& b, double tol) {
  for (auto& [k, t] : a.tensors) {
    if (k.rfind("model/", 0) == 0) {
      EXPECT_LT(max_abs_diff(t, b.tensor(k)), tol) << k;
    }
  }
}

// Every model/* tensor of checkpoint `a` equals b's to `tol` absolute, except at most a fraction
// `outliers` of each tensor's coordinates, which must be within `outlier_tol`.
inline void expect_model_tensors_close(const Checkpoint& a, const Checkpoint& b, double tol, double outlier_tol,
                                       double outliers) {
  for (auto& [k, t] : a.tensors) {
    if (k.rfind("model/", 0) != 0) continue;
    std::vector<double> x = t.to_double_vector(), y = b.tensor(k).to_double_vector();
    ASSERT_EQ(x.size(), y.size()) << k;
    size_t beyond = 0;
    double worst = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      const double d = std::fabs(x[i] - y[i]);
      beyond += !(d < tol);  // a NaN counts, and fails the max below
      worst = std::max(worst, std::isnan(d) ? INFINITY : d);
    }
    EXPECT_LE(double(beyond), outliers * double(x.size())) << k << ": " << beyond << " of " << x.size()
                                                             << " coordinates differ by " << tol << " or more";
    EXPECT_LT(worst, outlier_tol) << k;
  }
}

// A parallel run on the cuda device against the single-process device run of `steps` steps (log
// every step, a checkpoint at the last): train losses to 1e-5 relative (they must fall, so two
// constant runs cannot pass), grad norms to 1e-4, the last checkpoints' parameters to 1e-5
// absolute but for at most 0.5% of each tensor's coordinates, which must be within 3e-4, and
// their balancer states; returns the parallel run's last checkpoint. (AdamW scales each
// coordinate's step to about lr = 3e-3: a coordinate whose gradient nearly cancels carries the
// grads' summation-order error into its step, which fp32 rounding of the grad cannot bound; a
// few such coordinates are expected, a wrong sum moves most of them. Measured: the dense
// parameters within 5.2e-7; experts' weights 1.03e-5 on one machine, and on another (other
// OpenBLAS kernels under the emulation's GEMMs) 3 of 4096 coordinates of an expert w2 beyond 1e-5,
// the largest 3.09e-5, no tensor with more than 3 beyond 1e-5.)
inline Checkpoint expect_device_runs_match(const std::filesystem::path& ref, const std::filesystem::path& par,
                                           int64_t steps) {
  EXPECT_EQ(expect_metric_match(ref, par, "train", "loss", 1e-5), size_t(steps));
  EXPECT_EQ(expect_metric_match(ref, par, "train", "grad_norm", 1e-4), size_t(steps));
  const std::vector<double> loss = metric(ref, "train", "loss");
  EXPECT_EQ(loss.size(), size_t(steps));
  if (!loss.empty()) {
    EXPECT_LT(loss.back(), loss.front()) << "the loss must fall, so two constant runs cannot pass";
  }
  Checkpoint a = read_checkpoint(checkpoint_dir(ref, steps)), b = read_checkpoint(checkpoint_dir(par, steps));
  EXPECT_NE(b.meta.strings.at("backend").find("cuda"), std::string::npos);
  expect_model_tensors_close(a, b, 1e-5, 3e-4, 0.005);
  expect_balancer_states_match(a, b);
  return b;
}

// Training `r` over `w` must stop with a moe::Error whose message contains `needle`.
inline void expect_training_refused(const Recipe& r, const std::filesystem::path& dir, std::shared_ptr<Communicator> w,
                                    const std::string& needle) {
  try {
    train(r, dir, std::move(w));
    ADD_FAILURE() << "accepted; expected an error naming " << needle;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

}  // namespace moe::test
