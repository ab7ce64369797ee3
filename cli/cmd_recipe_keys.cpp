// `moetrain recipe-keys [--markdown]`: the recipe schema, the source of recipes/README.md's table.
#include <cstdio>

#include "cli/commands.h"
#include "recipes/recipe.h"

namespace moe::cli {

int cmd_recipe_keys(const std::vector<std::string>& args) {
  if (wants_help(args)) {
    std::printf("usage: moetrain recipe-keys [--markdown]\nPrints every recipe key, its type, default and meaning.\n");
    return 0;
  }
  bool md = !args.empty() && args[0] == "--markdown";
  if (md) std::printf("| key | type | default | meaning |\n|---|---|---|---|\n");
  for (const auto& k : recipe_keys()) {
    if (md) std::printf("| `%s` | %s | `%s` | %s |\n", k.key.c_str(), k.type.c_str(), k.default_value.c_str(), k.doc.c_str());
    else std::printf("%-34s %-28s %-14s %s\n", k.key.c_str(), k.type.c_str(), k.default_value.c_str(), k.doc.c_str());
  }
  return 0;
}

}  // namespace moe::cli
