// Byte-level tokenizer and the tokenizer factory.
// Bytes map to ids 0..255 unchanged, so shards of a byte corpus are the text itself.
#include "data/tokenizer.h"

#include "core/error.h"

namespace moe {

std::vector<uint32_t> ByteTokenizer::encode(std::string_view text) const {
  std::vector<uint32_t> ids(text.size());
  for (size_t i = 0; i < text.size(); ++i) ids[i] = static_cast<unsigned char>(text[i]);
  return ids;
}

std::string ByteTokenizer::decode(std::span<const uint32_t> ids) const {
  std::string text(ids.size(), '\0');
  for (size_t i = 0; i < ids.size(); ++i) {
    MOE_CHECK(ids[i] < 256, "ByteTokenizer::decode", "token ", ids[i], " at position ", i,
              " is outside the byte vocabulary [0, 256)");
    text[i] = static_cast<char>(ids[i]);
  }
  return text;
}

std::unique_ptr<Tokenizer> make_tokenizer(const std::string& name) {
  if (name == "byte") return std::make_unique<ByteTokenizer>();
  MOE_CHECK(name != "bpe", "make_tokenizer", "the bpe tokenizer is trained per corpus: prepare with tokenizer bpe, ",
            "then load it from the prepared directory (load_tokenizer)");
  MOE_FAIL("make_tokenizer", "unknown tokenizer '", name, "' (known: byte, bpe)");
}

}  // namespace moe
