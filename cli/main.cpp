// build/moetrain: the command-line entry point. Each subcommand lives in its own cli/cmd_*.cpp.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "core/error.h"

namespace {

void usage(FILE* out) {
  std::fprintf(out,
               "usage: moetrain <command> [args]\n\n"
               "commands:\n"
               "  train RECIPE.toml [--set section.key=value]... [--run-dir DIR] [--resume latest|PATH]\n"
               "  prepare brown --out DIR | prepare text FILE... --out DIR\n"
               "  inspect PATH              a checkpoint or a routing.h5, human-readable\n"
               "  compare RUN_DIR... [--markdown] [--csv FILE]   one table row per run (balance metrics)\n"
               "  recipe-keys [--markdown]  every recipe key with its type, default and meaning\n\n"
               "Run `moetrain <command> --help` for the options of a command.\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  std::string cmd = argv[1];
  std::vector<std::string> args(argv + 2, argv + argc);
  try {
    for (const auto& c : moe::cli::commands())
      if (c.name == cmd) return c.run(args);
    std::fprintf(stderr, "moetrain: unknown command '%s'\n", cmd.c_str());
    usage(stderr);
    return 2;
  } catch (const moe::Error& e) {
    std::fprintf(stderr, "moetrain %s: error: %s\n", cmd.c_str(), e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moetrain %s: error: %s\n", cmd.c_str(), e.what());
    return 1;
  }
}
