// A token dataset: the shards of one split (or any list of token files) seen as one stream,
// with the documents and genres of the prepared index for genre-aware evaluation.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/prepared.h"
#include "data/shard.h"

namespace moe {

// A document's tokens in the stream and its genre (an index into genre_names()).
struct DocSpan {
  uint64_t offset = 0, tokens = 0;
  int32_t genre = 0;
};

class TokenDataset {
 public:
  // The `split` of a prepared directory. Checks that index.tsv, meta.toml and the shards agree
  // (token counts, contiguous document offsets); a missing directory says to run prepare.
  static std::shared_ptr<const TokenDataset> open_prepared(const std::string& dir, Split split);
  // Any token files read as one stream: one document of genre "all", vocab_size() unknown (0).
  static std::shared_ptr<const TokenDataset> open_files(const std::vector<std::string>& files,
                                                        TokenFormat format);

  uint64_t size() const { return total_; }  // tokens
  // Tokens [begin, begin + n) as int32, crossing shard boundaries; range-checked.
  void copy(uint64_t begin, uint64_t n, int32_t* out) const;
  uint32_t at(uint64_t pos) const;
  const std::vector<DocSpan>& documents() const { return docs_; }
  const std::vector<std::string>& genre_names() const { return genre_names_; }
  int32_t genre_at(uint64_t pos) const;  // genre of the document holding token `pos`
  int64_t vocab_size() const { return vocab_size_; }
  const std::string& description() const { return description_; }  // "DIR train" or file list

 private:
  std::vector<TokenFile> files_;
  std::vector<uint64_t> starts_;  // stream offset of each file's first token
  uint64_t total_ = 0;
  std::vector<DocSpan> docs_;
  std::vector<std::string> genre_names_;
  int64_t vocab_size_ = 0;
  std::string description_;
  size_t file_of(uint64_t pos) const;
};

}  // namespace moe
