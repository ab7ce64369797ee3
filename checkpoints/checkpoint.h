// A training checkpoint in memory (tensors, vectors, strings, /meta) and its HDF5 form on disk:
// atomic write (tmp dir, fsync, rename, DONE last), keep-N pruning, verified read, resume.
#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace moe {

// Bumped whenever the on-disk layout changes; readers refuse newer versions.
inline constexpr int64_t kCheckpointFormatVersion = 1;

struct CheckpointMeta {
  int64_t step = 0;
  int64_t tokens_seen = 0;
  std::string recipe;  // the resolved recipe text
  int64_t world_size = 1, dp_size = 1, ep_size = 1;
  int64_t format_version = kCheckpointFormatVersion;  // written as kCheckpointFormatVersion
  // Further /meta attributes (backend, git revision, ...). Keys must not collide with the above.
  std::map<std::string, std::string> strings;
  std::map<std::string, int64_t> ints;
  std::map<std::string, double> doubles;
};

// Keys of the maps are paths inside the file without the leading '/', e.g.
// "model/layers.0.attn.wq", "optim/m/layers.0.attn.wq", "balance/layer_1/bias",
// "rng/rank_0/offsets", "data/rank_0/cursor". '/' makes groups; any other character, dots
// included, stays in the dataset name. A path may not be a prefix group of another entry's path
// and may not start with "meta".
struct Checkpoint {
  CheckpointMeta meta;
  // Any dtype, stored bit-exact (bf16 as u16). Written from either device (a tensor on the cuda
  // device is copied to the host while writing); read_checkpoint returns host tensors, which
  // Tensor::copy_ / AdamW::load_state copy into tensors on either device.
  std::map<std::string, Tensor> tensors;
  std::map<std::string, std::vector<double>> doubles;
  std::map<std::string, std::vector<int64_t>> ints;
  std::map<std::string, std::string> strings;  // stored as checksummed u8 datasets
  std::filesystem::path source;               // the directory read from (set by read_checkpoint)

  bool has(const std::string& path) const;
  // Accessors throw "checkpoint <source>: missing <kind> '<path>'" when absent.
  const Tensor& tensor(const std::string& path) const;
  const std::vector<double>& doubles_at(const std::string& path) const;
  const std::vector<int64_t>& ints_at(const std::string& path) const;
  const std::string& string_at(const std::string& path) const;
};

// run_dir/checkpoints/step_%06d
std::filesystem::path checkpoint_dir(const std::filesystem::path& run_dir, int64_t step);

// Writes run_dir/checkpoints/step_%06d.tmp/ckpt.h5, fsyncs it, renames the directory to
// step_%06d, then writes and fsyncs the DONE marker. A complete checkpoint of the same step is
// replaced. Then removes complete checkpoints older than `step` beyond the newest `keep`
// (keep <= 0 keeps all; the one just written always stays; newer ones are never touched),
// incomplete step dirs and stale *.tmp dirs. Returns the step directory.
// ckpt.meta.step must equal `step`. On failure nothing that existed before is modified except
// stale .tmp dirs of this step.
std::filesystem::path write_checkpoint(const std::filesystem::path& run_dir, int64_t step, const Checkpoint& ckpt,
                                       int keep);

// Reads a checkpoint: `path` is a step directory (must hold DONE) or a ckpt.h5 file. Every
// dataset's Fletcher32 checksum is verified (an error names the dataset), every dataset must be
// checksummed, and a format version newer than kCheckpointFormatVersion is refused.
Checkpoint read_checkpoint(const std::filesystem::path& path);

// Complete checkpoints (step dir with DONE and ckpt.h5) of a run, newest first.
std::vector<std::filesystem::path> list_checkpoints(const std::filesystem::path& run_dir);
std::optional<std::filesystem::path> find_latest_checkpoint(const std::filesystem::path& run_dir);

// Reads the newest complete checkpoint; when it fails (checksum, truncation, version), writes
// one line saying so to `log` and tries the previous one. nullopt when the run has no complete
// checkpoint; throws listing every failure when none of them can be read.
std::optional<Checkpoint> resume_latest(const std::filesystem::path& run_dir, std::ostream& log);

}  // namespace moe
