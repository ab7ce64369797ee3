// The training loop of `moetrain train`: builds the model from a recipe, trains with AdamW,
// updates balancers, logs metrics.jsonl and routing.h5, evaluates, checkpoints and resumes.
#pragma once
#include <cstdint>
#include <iosfwd>
#include <memory>
#include <string>

#include "recipes/recipe.h"

namespace moe {

class Communicator;

struct TrainOptions {
  std::string run_dir;      // "" -> runs/<train.name or the recipe's file stem>
  std::string resume;       // "" (fresh run), "latest", or a checkpoint step directory
  std::ostream* out = nullptr;  // console (std::cout when null)
  // Stop after this step as a preemption would (checkpoint, clean exit); 0 = run to the end.
  // Lets tests interrupt a run at an exact step without signals.
  int64_t stop_after_step = 0;
  // The data-parallel world; null = world_communicator() (MPI_COMM_WORLD under mpirun, else a
  // single process). Every rank must run the same recipe; rank 0 alone writes the run directory.
  std::shared_ptr<Communicator> comm;
};

// Exit codes of `moetrain train`.
constexpr int kTrainOk = 0;          // finished, or stopped by SIGINT/SIGTERM after a checkpoint
constexpr int kTrainDiverged = 3;    // NaN / inf loss or gradient: stopped, last checkpoint intact

// Runs the whole job; returns an exit code above. Bad input throws moe::Error (one line).
int run_training(const Recipe& recipe, const TrainOptions& options);

// The run directory a recipe and options resolve to.
std::string resolve_run_dir(const Recipe& recipe, const TrainOptions& options);

}  // namespace moe
