// The subcommands of build/moetrain; each is defined in its own cli/cmd_<name>.cpp.
#pragma once
#include <functional>
#include <string>
#include <vector>

namespace moe::cli {

struct Command {
  std::string name;
  std::function<int(const std::vector<std::string>&)> run;
};

const std::vector<Command>& commands();

int cmd_recipe_keys(const std::vector<std::string>& args);
int cmd_train(const std::vector<std::string>& args);
int cmd_prepare(const std::vector<std::string>& args);
int cmd_inspect(const std::vector<std::string>& args);
int cmd_compare(const std::vector<std::string>& args);

// True when args hold --help or -h (then the command prints its help and returns 0).
bool wants_help(const std::vector<std::string>& args);

}  // namespace moe::cli
