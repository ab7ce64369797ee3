// Token files: llm.c shards (256 x int32 header: magic 20240520, version 1, token count; then
// uint16 tokens) and headerless raw uint16 / uint32 token files; a writer and mmap'd readers.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>

namespace moe {

constexpr int32_t kShardMagic = 20240520;
constexpr int32_t kShardVersion = 1;
constexpr size_t kShardHeaderInts = 256;
constexpr size_t kShardHeaderBytes = kShardHeaderInts * sizeof(int32_t);

enum class TokenFormat { llmc, raw_u16, raw_u32 };
const char* token_format_name(TokenFormat f);  // "llm.c", "raw uint16", "raw uint32"
// "llmc" | "u16" | "u32" (also "llm.c", "uint16", "uint32"); anything else is an error.
TokenFormat parse_token_format(const std::string& name);

// Writes an llm.c shard atomically (to `path`.tmp, then renamed). Tokens must fit in uint16;
// at most INT32_MAX tokens (the header stores the count as int32).
void write_shard(const std::string& path, std::span<const uint16_t> tokens);

// A read-only memory map of one token file. Errors (missing file, truncated or oversized file,
// foreign magic / version, odd size of a raw file) are one line naming the file and what was
// expected, followed by `remedy` (e.g. "re-run `moetrain prepare brown`").
class TokenFile {
 public:
  static TokenFile open(const std::string& path, TokenFormat format = TokenFormat::llmc,
                        const std::string& remedy = "");

  const std::string& path() const { return path_; }
  TokenFormat format() const { return format_; }
  size_t size() const { return count_; }  // tokens
  uint32_t at(size_t i) const { return width_ == 2 ? u16_[i] : u32_[i]; }
  // Copies tokens [begin, begin + n) as int32 (the id dtype of a batch); range-checked.
  void copy_to(size_t begin, size_t n, int32_t* out) const;

 private:
  struct Mapping;
  std::shared_ptr<Mapping> map_;
  std::string path_;
  TokenFormat format_ = TokenFormat::llmc;
  size_t count_ = 0, width_ = 2;
  const uint16_t* u16_ = nullptr;
  const uint32_t* u32_ = nullptr;
};

}  // namespace moe
