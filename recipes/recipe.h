// A training recipe: every setting of a run, parsed from TOML (recipes/*.toml) with
// validation, `--set section.key=value` overrides, and a resolved TOML rendering for the run dir.
#pragma once
#include <string>
#include <vector>

#include "layers/model_config.h"

namespace moe {

struct DataSection {
  std::string dir = "data/brown";  // a prepared directory (`moetrain prepare brown --out DIR`)
};

struct OptimSection {
  double lr = 3e-3;
  double min_lr = 3e-4;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
  double grad_clip = 1.0;  // max global grad norm; 0 disables clipping
};

struct ScheduleSection {
  std::string kind = "cosine";  // cosine | wsd | constant
  int64_t warmup_steps = 20;
  double decay_fraction = 0.2;  // wsd: share of steps in the final decay
};

struct TrainSection {
  int64_t steps = 200;
  int64_t batch_size = 16;  // sequences per optimizer step over all ranks (the global batch)
  int64_t seq_len = 128;
  int64_t grad_accum = 1;   // micro-batches per optimizer step (each of batch_size / grad_accum / world)
  int64_t seed = 1234;
  std::string device = "cpu";  // cpu | cuda
  std::string cuda_activations = "bf16";  // bf16 | fp32 (device = "cuda" only)
  std::string name = "";       // run name: runs/<name> unless --run-dir is given
};

struct EvalSection {
  int64_t every = 0;     // 0: only at the end
  int64_t batches = 8;   // validation batches per evaluation (0: the whole split)
};

struct LogSection {
  int64_t every = 10;          // console line and metrics.jsonl
  int64_t flush_every = 10;    // routing.h5 flush interval in steps
};

struct CheckpointSection {
  int64_t every = 0;  // 0: only at the end (and on SIGINT/SIGTERM)
  int64_t keep = 3;
  bool at_end = true;  // false: no checkpoint at the last step (throughput sweeps of big models)
};

struct ParallelSection {
  int64_t ep = 1;
  bool llep = false;
  double llep_threshold = 1.3;
};

struct Recipe {
  std::string path;  // where it was read from ("" when built in code)
  ModelConfig model;
  DataSection data;
  OptimSection optim;
  ScheduleSection schedule;
  TrainSection train;
  EvalSection eval;
  LogSection log;
  CheckpointSection checkpoint;
  ParallelSection parallel;
};

// Reads and validates a recipe file, then applies `overrides` ("section.key=value", value in
// TOML syntax; bare words are taken as strings). Throws moe::Error "FILE:LINE: key ...: ..." on
// unknown keys, wrong types and out-of-range values.
Recipe load_recipe(const std::string& path, const std::vector<std::string>& overrides = {});
Recipe parse_recipe(const std::string& toml_text, const std::string& source_name,
                    const std::vector<std::string>& overrides = {});

// Every key with its resolved value, as TOML that parse_recipe reads back to the same Recipe.
std::string resolved_toml(const Recipe& r);

// The schema, for documentation and tests: "section.key", type, default and description.
struct RecipeKeyDoc {
  std::string key, type, default_value, doc;
};
std::vector<RecipeKeyDoc> recipe_keys();

}  // namespace moe
