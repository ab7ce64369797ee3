// A prepared corpus directory: tokenized llm.c shards per split, a per-document index with
// genres, meta.toml, and a DONE marker written last. The writer both preparers share, and readers.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/tokenizer.h"

namespace moe {

// Layout of DIR (see docs/formats.md):
//   train_000.bin, train_001.bin, ...   llm.c shards of the train split (documents in order)
//   val_000.bin, ...                    llm.c shards of the validation split
//   index.tsv                           one row per document (header row first):
//                                       doc  split  genre  genre_name  offset  tokens
//                                       offset = first token of the document in its split's
//                                       stream (the split's shards concatenated in order)
//   meta.toml                           source, tokenizer, vocab_size, counts, genres
//   tokenizer.bpe                       the merges, only when tokenizer = "bpe" (data/bpe.h)
//   DONE                                written last; a directory without it is incomplete
enum class Split { train, val };
const char* split_name(Split s);  // "train", "val"
Split parse_split(const std::string& name);  // "train" | "val" (also "validation")

// One document of a corpus before tokenization.
struct Document {
  std::string name;        // e.g. "ca01" or a file name
  std::string genre;       // short id, e.g. "a"; "text" for plain text
  std::string genre_name;  // e.g. "news"
  Split split = Split::train;
  std::string text;
};

// One row of index.tsv.
struct DocEntry {
  std::string name, genre, genre_name;
  Split split = Split::train;
  uint64_t offset = 0, tokens = 0;
};

struct PrepareOptions {
  std::string tokenizer = "byte";       // "byte" | "bpe" (trained on the train split, saved as tokenizer.bpe)
  int64_t bpe_vocab = 4096;             // vocab size of a trained BPE (256 bytes + merges)
  uint64_t shard_tokens = 100'000'000;  // llm.c's shard size; tests use small values
  bool quiet = false;                   // progress lines on stderr unless set
};

// What meta.toml says about a prepared directory.
struct CorpusMeta {
  std::string source;  // "brown" | "text"
  std::string tokenizer;
  int64_t vocab_size = 0;
  uint64_t documents = 0, train_documents = 0, val_documents = 0;
  uint64_t train_tokens = 0, val_tokens = 0, train_shards = 0, val_shards = 0;
  std::vector<std::string> genres, genre_names;  // genre index -> id / name, in first-seen order
};

// Tokenizes `docs` (documents keep their order within each split) and writes DIR's layout,
// DONE last. Stale files of an earlier incomplete run are removed first. `source` names the
// preparer for meta.toml and for the remedy in error messages ("brown" | "text").
CorpusMeta write_prepared(const std::string& dir, const std::string& source,
                          const std::vector<Document>& docs, const PrepareOptions& opt);

bool is_prepared(const std::string& dir);  // DONE exists
// The tokenizer a prepared directory was tokenized with (reads meta.toml, and tokenizer.bpe).
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& dir);
// Whether a prepared directory's meta matches what `opt` would produce (for reuse).
bool same_tokenizer(const CorpusMeta& meta, const PrepareOptions& opt);
// Readers; a missing or incomplete directory is an error that says to run `moetrain prepare`.
CorpusMeta read_meta(const std::string& dir);
std::vector<DocEntry> read_index(const std::string& dir);
std::vector<std::string> split_shard_paths(const std::string& dir, Split split, uint64_t count);
std::string shard_file_name(Split split, uint64_t i);  // "train_000.bin"
// "re-run `moetrain prepare brown --out DIR`" (or `prepare text FILES... --out DIR`).
std::string prepare_remedy(const std::string& dir, const std::string& source);

}  // namespace moe
