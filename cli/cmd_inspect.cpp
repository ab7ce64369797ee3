// `moetrain inspect PATH`: a checkpoint (step directory or ckpt.h5) or a routing.h5, human-readable.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>

#include "checkpoints/checkpoint.h"
#include "checkpoints/inspect.h"
#include "cli/commands.h"
#include "core/error.h"

namespace fs = std::filesystem;

namespace moe::cli {
namespace {

void inspect_checkpoint(const fs::path& path) {
  Checkpoint c = read_checkpoint(path);
  std::printf("checkpoint %s (all checksums verified)\n", c.source.string().c_str());
  std::printf("  step %lld, tokens seen %lld, world %lld (dp %lld x ep %lld), format v%lld\n", (long long)c.meta.step,
              (long long)c.meta.tokens_seen, (long long)c.meta.world_size, (long long)c.meta.dp_size,
              (long long)c.meta.ep_size, (long long)c.meta.format_version);
  for (auto& [k, v] : c.meta.strings) std::printf("  %s: %s\n", k.c_str(), v.c_str());
  int64_t params = 0;
  std::printf("  tensors (%zu):\n", c.tensors.size());
  for (auto& [name, t] : c.tensors) {
    double ss = 0;
    for (double x : t.to_double_vector()) ss += x * x;
    if (name.rfind("model/", 0) == 0) params += t.numel();
    std::printf("    %-48s %-5s %-18s norm %.6g\n", name.c_str(), dtype_name(t.dtype()), t.shape_str().c_str(), std::sqrt(ss));
  }
  std::printf("  model parameters: %lld\n", (long long)params);
  for (auto& [name, v] : c.doubles) {
    double lo = v.empty() ? 0 : *std::min_element(v.begin(), v.end());
    double hi = v.empty() ? 0 : *std::max_element(v.begin(), v.end());
    std::printf("    %-48s [%zu] min %.6g max %.6g\n", name.c_str(), v.size(), lo, hi);
  }
  for (auto& [name, v] : c.ints) {
    std::printf("    %-48s", name.c_str());
    for (int64_t x : v) std::printf(" %lld", (long long)x);
    std::printf("\n");
  }
  std::printf("  recipe: %zu bytes of resolved TOML (stored in /meta)\n", c.meta.recipe.size());
}

}  // namespace

int cmd_inspect(const std::vector<std::string>& args) {
  if (wants_help(args) || args.size() != 1) {
    std::printf("usage: moetrain inspect PATH\n  PATH: a checkpoint step directory (runs/X/checkpoints/step_000100),"
                " its ckpt.h5, or a routing.h5\n");
    return args.size() == 1 ? 0 : 2;
  }
  fs::path p = args[0];
  if (!fs::exists(p)) throw Error(p.string() + ": no such file or directory");
  if (fs::is_directory(p) || p.filename() == "ckpt.h5") {
    inspect_checkpoint(p);
    return 0;
  }
  int corrupt = describe_h5(p, std::cout);  // routing.h5 or any HDF5 file, checksums verified
  return corrupt == 0 ? 0 : 1;
}

}  // namespace moe::cli
