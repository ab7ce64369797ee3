// Tokenizers: the interface the data pipeline and the CLI use, and the byte-level tokenizer
// (vocab 256, lossless on any byte string) that every prepared corpus uses by default.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace moe {

// A tokenizer maps text to ids in [0, vocab_size()) and back. decode(encode(s)) == s must hold
// for every tokenizer moetrain ships, so that prepared shards can always be read back as text.
class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::string name() const = 0;  // recorded in a prepared directory's meta.toml
  virtual int64_t vocab_size() const = 0;
  virtual std::vector<uint32_t> encode(std::string_view text) const = 0;
  virtual std::string decode(std::span<const uint32_t> ids) const = 0;
};

// Every byte is its own token: no training, no unknown tokens, vocab 256.
class ByteTokenizer final : public Tokenizer {
 public:
  std::string name() const override { return "byte"; }
  int64_t vocab_size() const override { return 256; }
  std::vector<uint32_t> encode(std::string_view text) const override;
  std::string decode(std::span<const uint32_t> ids) const override;  // ids >= 256 are an error
};

// The tokenizer of that name ("byte"); an unknown name is an error listing the known ones.
// A BPE is trained per corpus: load it with load_tokenizer(dir) (data/prepared.h).
std::unique_ptr<Tokenizer> make_tokenizer(const std::string& name);

}  // namespace moe
