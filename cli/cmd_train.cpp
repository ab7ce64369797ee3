// `moetrain train RECIPE.toml [--set k=v]... [--run-dir DIR] [--resume latest|PATH]`.
#include <cstdio>
#include <iostream>

#include "cli/commands.h"
#include "core/error.h"
#include "recipes/recipe.h"
#include "recipes/trainer.h"

namespace moe::cli {

namespace {
const char* kTrainHelp =
    "usage: moetrain train RECIPE.toml [--set section.key=value]... [--run-dir DIR] [--resume latest|PATH]\n\n"
    "Trains the model a recipe describes (see recipes/README.md for every key).\n"
    "  --set section.key=value  override a recipe key (same validation as the file; repeatable)\n"
    "  --run-dir DIR            where metrics.jsonl, routing.h5, recipe.toml and checkpoints/ go\n"
    "                           (default runs/<train.name>, or runs/<recipe file stem>)\n"
    "  --resume latest|PATH     continue from the newest complete checkpoint of the run directory\n"
    "                           (falling back to older ones if it is damaged), or from a step directory\n"
    "SIGINT / SIGTERM write a checkpoint at the end of the current step and exit cleanly.\n"
    "Exit codes: 0 done or stopped by a signal, 1 bad input, 3 the loss diverged (NaN / inf).\n";
}  // namespace

int cmd_train(const std::vector<std::string>& args) {
  if (wants_help(args)) {
    std::printf("%s", kTrainHelp);
    return 0;
  }
  std::string recipe_path;
  std::vector<std::string> overrides;
  TrainOptions opt;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&](const char* flag) -> std::string {
      if (i + 1 >= args.size()) throw Error(std::string(flag) + ": missing value (see moetrain train --help)");
      return args[++i];
    };
    if (a == "--set") overrides.push_back(value("--set"));
    else if (a.rfind("--set=", 0) == 0) overrides.push_back(a.substr(6));
    else if (a == "--run-dir") opt.run_dir = value("--run-dir");
    else if (a == "--resume") opt.resume = value("--resume");
    else if (!a.empty() && a[0] == '-') throw Error("unknown option '" + a + "' (see moetrain train --help)");
    else if (recipe_path.empty()) recipe_path = a;
    else throw Error("more than one recipe given ('" + recipe_path + "' and '" + a + "')");
  }
  if (recipe_path.empty()) {
    std::fprintf(stderr, "%s", kTrainHelp);
    return 2;
  }
  Recipe r = load_recipe(recipe_path, overrides);
  return run_training(r, opt);
}

}  // namespace moe::cli
