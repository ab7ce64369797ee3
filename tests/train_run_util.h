// For trainer-level tests: a fresh run directory under build/test_runs and run_training with its
// console captured (tests read metrics.jsonl and checkpoints, and the console on failure).
#pragma once
#include <cstdint>
#include <filesystem>
#include <sstream>
#include <string>

#include "recipes/recipe.h"
#include "recipes/trainer.h"

namespace moe::test {

inline std::filesystem::path fresh_run_dir(const std::string& name) {
  std::filesystem::path d = std::filesystem::path(MOE_BINARY_DIR) / "test_runs" / name;
  std::filesystem::remove_all(d);
  return d;
}

// Trains `r` into `dir` (resuming from `resume` when given, stopping after `stop_after` steps
// when > 0); returns run_training's exit code and leaves the console in *console.
inline int train_quietly(const Recipe& r, const std::filesystem::path& dir, const std::string& resume = "",
                         int64_t stop_after = 0, std::string* console = nullptr) {
  std::ostringstream os;
  TrainOptions o;
  o.run_dir = dir.string();
  o.resume = resume;
  o.stop_after_step = stop_after;
  o.out = &os;
  int rc = run_training(r, o);
  if (console) *console = os.str();
  return rc;
}

}  // namespace moe::test
