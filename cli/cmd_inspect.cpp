// `moetrain inspect PATH`: a checkpoint (step directory or ckpt.h5) or a routing.h5, human-readable.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>

#include "checkpoints/checkpoint.h"
#include "checkpoints/hdf5_util.h"
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

void inspect_h5(const fs::path& path) {
  h5::File f = h5::File::open(path, h5::File::Mode::read, false);
  std::printf("%s\n", path.string().c_str());
  std::function<void(const std::string&, int)> walk = [&](const std::string& group, int depth) {
    for (const auto& ch : f.children(group)) {
      std::string p = (group == "/" ? "" : group) + "/" + ch.name;
      if (ch.kind == h5::ObjKind::group) {
        std::printf("%*s%s/\n", 2 * depth, "", ch.name.c_str());
        walk(p, depth + 1);
        continue;
      }
      h5::DatasetInfo info = f.info(p);
      std::string shape = "[";
      int64_t n = 1;
      for (size_t i = 0; i < info.shape.size(); ++i) {
        shape += (i ? ", " : "") + std::to_string(info.shape[i]);
        n *= info.shape[i];
      }
      shape += "]";
      std::printf("%*s%-22s %-4s %-12s", 2 * depth, "", ch.name.c_str(), h5::elem_type_name(info.type), shape.c_str());
      if (n > 0 && n <= 50'000'000 && (info.type == h5::ElemType::f64 || info.type == h5::ElemType::i64)) {
        std::vector<double> v = f.read<double>(p);
        int64_t row = info.shape.size() == 2 ? info.shape[1] : 1;
        std::vector<double> last(v.end() - row, v.end());
        double lo = *std::min_element(last.begin(), last.end()), hi = *std::max_element(last.begin(), last.end());
        if (row == 1) std::printf(" last %.6g", last[0]);
        else std::printf(" last row min %.6g max %.6g", lo, hi);
      }
      std::printf("\n");
    }
  };
  walk("/", 1);
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
  if (fs::is_directory(p) || p.filename() == "ckpt.h5") inspect_checkpoint(p);
  else inspect_h5(p);
  return 0;
}

}  // namespace moe::cli
