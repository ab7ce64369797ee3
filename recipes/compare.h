// `moetrain compare`: one summary row per run directory, computed from its routing.h5,
// metrics.jsonl and recipe.toml, rendered as a markdown table or CSV (docs/results.md).
#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace moe {

// What compare reports for one run. Every statistic's definition is in docs/results.md; NaN
// means "not available in this run" (printed as n/a).
struct RunSummary {
  std::string run;       // the run directory's name
  std::string dir;       // the directory as given
  std::string strategy;  // router.balance of the run's recipe.toml
  int64_t num_experts = 0;
  int64_t num_layers = 0;   // MoE layers logged in routing.h5
  int64_t first_step = 0;   // first and last step logged in routing.h5
  int64_t last_step = 0;
  double final_val_ppl = 0;   // val_ppl of the last eval row of metrics.jsonl
  double avg_maxvio = 0;      // mean over (step, layer) of /layer_<l>/maxvio
  double sup_maxvio = 0;      // max over (step, layer)
  double maxvio_first = 0;    // mean over layers at the first logged step (step 1)
  double maxvio_last = 0;     // mean over layers at the last logged step
  double maxvio_global = 0;   // last eval, worst layer (/eval/layer_<l>/maxvio_global)
  int64_t dead_experts = 0;   // at the last step, summed over layers
  double dropped_share = 0;   // sum of dropped / sum of load over all steps and layers
  double routing_time_share = 0;  // sum of /layer_<l>/routing_time_s / sum of step_time_s (steps > first)
  double tokens_per_s = 0;    // mean tokens_per_s of the train rows after the first
  double wall_s = 0;          // estimated: sum over train rows of new tokens / tokens_per_s
};

// One flat JSON object of metrics.jsonl: numbers (NaN, Infinity included) and strings.
struct JsonRow {
  std::map<std::string, double> numbers;
  std::map<std::string, std::string> strings;
};
// Parses one line; throws moe::Error naming `where` on anything but a flat object.
JsonRow parse_json_row(const std::string& line, const std::string& where);

// Reads DIR/recipe.toml, DIR/metrics.jsonl and DIR/routing.h5. A missing file or dataset
// throws moe::Error "run DIR: FILE: ...".
RunSummary summarize_run(const std::filesystem::path& dir);

std::string compare_markdown(const std::vector<RunSummary>& runs);
std::string compare_csv(const std::vector<RunSummary>& runs);

}  // namespace moe
