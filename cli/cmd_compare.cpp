// `moetrain compare RUN_DIR...`: one table row per run (perplexity, MaxVio statistics, dead
// experts, drops, speed) from routing.h5 / metrics.jsonl / recipe.toml; markdown or CSV.
#include <cstdio>
#include <fstream>
#include <iostream>

#include "cli/commands.h"
#include "core/error.h"
#include "recipes/compare.h"

namespace moe::cli {

namespace {
void compare_help() {
  std::printf(
      "usage: moetrain compare RUN_DIR... [--markdown] [--csv FILE]\n"
      "  One row per run directory (what `moetrain train` wrote: recipe.toml, metrics.jsonl, routing.h5).\n"
      "  Prints a markdown table (the default; --markdown says so explicitly); --csv FILE also writes\n"
      "  the table as CSV (10 significant digits) to FILE ('-' for stdout instead of the markdown).\n"
      "columns:\n"
      "  strategy       router.balance of the run's recipe.toml\n"
      "  val_ppl        val_ppl of the last eval row of metrics.jsonl\n"
      "  AvgMaxVio      mean over every logged step and every MoE layer of /layer_<l>/maxvio\n"
      "                 (one average over all (step, layer) pairs)\n"
      "  SupMaxVio      max over steps and layers of /layer_<l>/maxvio\n"
      "  MaxVio_first   mean over layers of maxvio at the first logged step (step 1)\n"
      "  MaxVio_last    mean over layers of maxvio at the last logged step\n"
      "  MaxVio_global  last evaluation, worst layer (/eval/layer_<l>/maxvio_global)\n"
      "  dead_experts   experts with load 0 at the last step, summed over layers\n"
      "  dropped_share  sum of /layer_<l>/dropped / sum of /layer_<l>/load over all steps and layers\n"
      "  routing_time_share  sum over layers and steps after the first of /layer_<l>/routing_time_s\n"
      "                 over the sum of step_time_s (n/a for runs logged before these series)\n"
      "  tokens_per_s   mean tokens_per_s of the metrics.jsonl train rows after the first\n"
      "  wall_s_est     estimated training time: sum over train rows of new tokens / tokens_per_s\n"
      "                 (the trainer logs no wall clock; startup and the last eval are not included)\n");
}
}  // namespace

int cmd_compare(const std::vector<std::string>& args) {
  if (wants_help(args)) {
    compare_help();
    return 0;
  }
  std::vector<std::string> dirs;
  std::string csv_path;
  bool markdown = false;
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--csv") {
      if (i + 1 >= args.size()) throw Error("--csv needs a file name (or - for stdout)");
      csv_path = args[++i];
    } else if (args[i] == "--markdown") {
      markdown = true;
    } else if (args[i].rfind("--", 0) == 0) {
      throw Error("unknown option " + args[i] + " (see moetrain compare --help)");
    } else {
      dirs.push_back(args[i]);
    }
  }
  if (dirs.empty()) {
    compare_help();
    return 2;
  }
  std::vector<RunSummary> runs;
  for (const std::string& d : dirs) runs.push_back(summarize_run(d));
  std::string csv = compare_csv(runs);
  if (csv_path == "-") {
    std::fputs(csv.c_str(), stdout);
    if (!markdown) return 0;
  } else if (!csv_path.empty()) {
    std::ofstream f(csv_path);
    if (!(f << csv)) throw Error("--csv " + csv_path + ": cannot write the file");
  }
  std::fputs(compare_markdown(runs).c_str(), stdout);
  return 0;
}

}  // namespace moe::cli
