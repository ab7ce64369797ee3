// Byte-level BPE tokenizer: merges learned on a corpus over GPT-2-style pre-tokenized chunks
// (words with their leading space, digit runs, punctuation runs, whitespace), lossless on bytes.
#pragma once
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "data/tokenizer.h"

namespace moe {

// Ids 0..255 are the bytes; id 256 + i is merges()[i] = (left id, right id). Encoding applies
// merges in learned order inside each chunk, so no token spans two chunks.
class BpeTokenizer final : public Tokenizer {
 public:
  explicit BpeTokenizer(std::vector<std::pair<uint32_t, uint32_t>> merges);

  // Learns vocab_size - 256 merges (fewer if the corpus runs out of pairs that occur twice).
  // Deterministic: ties between equally frequent pairs go to the smaller (left, right) ids.
  static BpeTokenizer train(const std::vector<std::string>& texts, int64_t vocab_size);
  // Text file: "moetrain-bpe 1" then one "left right" line per merge. Errors name the file/line.
  static BpeTokenizer load(const std::string& path);
  void save(const std::string& path) const;

  std::string name() const override { return "bpe"; }
  int64_t vocab_size() const override { return 256 + int64_t(merges_.size()); }
  std::vector<uint32_t> encode(std::string_view text) const override;
  std::string decode(std::span<const uint32_t> ids) const override;
  const std::vector<std::pair<uint32_t, uint32_t>>& merges() const { return merges_; }
  const std::string& token_bytes(uint32_t id) const { return bytes_.at(id); }

 private:
  std::vector<std::pair<uint32_t, uint32_t>> merges_;
  std::vector<std::string> bytes_;                // id -> the bytes it stands for
  std::unordered_map<uint64_t, uint32_t> rank_;  // (left << 32 | right) -> merge index
  std::vector<uint32_t> encode_chunk(std::string_view chunk) const;
};

// Splits text into the chunks BPE merges never cross; concatenated they are the text.
std::vector<std::string_view> bpe_chunks(std::string_view text);

}  // namespace moe
