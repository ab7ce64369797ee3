// TokenDataset: opens and cross-checks a split's shards against index.tsv and meta.toml, and
// reads token ranges across shard boundaries.
#include "data/dataset.h"

#include <algorithm>

#include "core/error.h"

namespace moe {

std::shared_ptr<const TokenDataset> TokenDataset::open_prepared(const std::string& dir, Split split) {
  const CorpusMeta meta = read_meta(dir);
  const std::vector<DocEntry> index = read_index(dir);
  const std::string remedy = prepare_remedy(dir, meta.source);
  auto ds = std::make_shared<TokenDataset>();
  ds->vocab_size_ = meta.vocab_size;
  ds->genre_names_ = meta.genre_names;
  ds->description_ = dir + " " + split_name(split);
  const uint64_t shards = split == Split::train ? meta.train_shards : meta.val_shards;
  for (const std::string& path : split_shard_paths(dir, split, shards)) {
    ds->files_.push_back(TokenFile::open(path, TokenFormat::llmc, remedy));
    ds->starts_.push_back(ds->total_);
    ds->total_ += ds->files_.back().size();
  }
  const uint64_t expect = split == Split::train ? meta.train_tokens : meta.val_tokens;
  MOE_CHECK(ds->total_ == expect, (dir + "/meta.toml").c_str(), split_name(split), "_tokens = ", expect,
            " but the shards hold ", ds->total_, " tokens; ", remedy);
  uint64_t next = 0;
  for (const DocEntry& e : index) {
    if (e.split != split) continue;
    auto g = std::find(meta.genres.begin(), meta.genres.end(), e.genre);
    MOE_CHECK(g != meta.genres.end(), (dir + "/index.tsv").c_str(), "document ", e.name, " has genre '", e.genre,
              "' that meta.toml does not list; ", remedy);
    MOE_CHECK(e.offset == next, (dir + "/index.tsv").c_str(), "document ", e.name, " starts at token ", e.offset,
              " (expected ", next, ", right after the previous ", split_name(split), " document); ", remedy);
    next += e.tokens;
    ds->docs_.push_back({e.offset, e.tokens, int32_t(g - meta.genres.begin())});
  }
  MOE_CHECK(next == ds->total_, (dir + "/index.tsv").c_str(), split_name(split), " documents cover ", next,
            " tokens but the shards hold ", ds->total_, "; ", remedy);
  return ds;
}

std::shared_ptr<const TokenDataset> TokenDataset::open_files(const std::vector<std::string>& files,
                                                             TokenFormat format) {
  MOE_CHECK(!files.empty(), "TokenDataset::open_files", "no token files given");
  auto ds = std::make_shared<TokenDataset>();
  for (const std::string& path : files) {
    ds->files_.push_back(TokenFile::open(path, format));
    ds->starts_.push_back(ds->total_);
    ds->total_ += ds->files_.back().size();
    ds->description_ += (ds->description_.empty() ? "" : ", ") + path;
  }
  ds->genre_names_ = {"all"};
  ds->docs_.push_back({0, ds->total_, 0});
  return ds;
}

size_t TokenDataset::file_of(uint64_t pos) const {
  auto it = std::upper_bound(starts_.begin(), starts_.end(), pos);
  return size_t(it - starts_.begin()) - 1;
}

uint32_t TokenDataset::at(uint64_t pos) const {
  MOE_CHECK(pos < total_, description_.c_str(), "token ", pos, " outside the stream of ", total_, " tokens");
  const size_t f = file_of(pos);
  return files_[f].at(pos - starts_[f]);
}

void TokenDataset::copy(uint64_t begin, uint64_t n, int32_t* out) const {
  MOE_CHECK(begin <= total_ && n <= total_ - begin, description_.c_str(), "token range [", begin, ", ",
            begin + n, ") outside the stream of ", total_, " tokens");
  while (n > 0) {
    const size_t f = file_of(begin);
    const uint64_t local = begin - starts_[f];
    const uint64_t take = std::min<uint64_t>(n, files_[f].size() - local);
    files_[f].copy_to(local, take, out);
    begin += take;
    out += take;
    n -= take;
  }
}

int32_t TokenDataset::genre_at(uint64_t pos) const {
  MOE_CHECK(pos < total_, description_.c_str(), "token ", pos, " outside the stream of ", total_, " tokens");
  auto it = std::upper_bound(docs_.begin(), docs_.end(), pos,
                             [](uint64_t p, const DocSpan& d) { return p < d.offset; });
  // Zero-token documents share an offset with their successor; the last one that starts at
  // or before pos holds it.
  return (it - 1)->genre;
}

}  // namespace moe
