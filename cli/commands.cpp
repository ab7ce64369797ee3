// The table of subcommands.
#include "cli/commands.h"

#include <algorithm>

namespace moe::cli {

bool wants_help(const std::vector<std::string>& args) {
  return std::find(args.begin(), args.end(), "--help") != args.end() ||
         std::find(args.begin(), args.end(), "-h") != args.end();
}

const std::vector<Command>& commands() {
  static const std::vector<Command> table = {
      {"train", cmd_train},
      {"prepare", cmd_prepare},
      {"inspect", cmd_inspect},
      {"compare", cmd_compare},
      {"recipe-keys", cmd_recipe_keys},
  };
  return table;
}

}  // namespace moe::cli
