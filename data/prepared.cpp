// Writer and readers of a prepared corpus directory (shards, index.tsv, meta.toml, DONE).
// The DONE marker is written last so that an interrupted prepare is redone, never half-used.
#include "data/prepared.h"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <toml++/toml.h>

#include "core/error.h"
#include "data/bpe.h"
#include "data/shard.h"

namespace fs = std::filesystem;

namespace moe {

const char* split_name(Split s) { return s == Split::train ? "train" : "val"; }

Split parse_split(const std::string& name) {
  if (name == "train") return Split::train;
  if (name == "val" || name == "validation") return Split::val;
  MOE_FAIL("split", "unknown split '", name, "' (expected train or val)");
}

std::string shard_file_name(Split split, uint64_t i) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%s_%03llu.bin", split_name(split), (unsigned long long)i);
  return buf;
}

std::string prepare_remedy(const std::string& dir, const std::string& source) {
  if (source == "text") return "re-run `moetrain prepare text FILES... --out " + dir + "`";
  return "re-run `moetrain prepare brown --out " + dir + "`";
}

namespace {

std::string toml_str(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    if (c == '\n') { out += "\\n"; continue; }
    out += c;
  }
  return out + "\"";
}

std::string toml_list(const std::vector<std::string>& v) {
  std::string out = "[";
  for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + toml_str(v[i]);
  return out + "]";
}

// Fields of index.tsv must not contain tabs or newlines; names come from file names.
std::string tsv_field(const std::string& s) {
  std::string out = s;
  for (char& c : out)
    if (c == '\t' || c == '\n' || c == '\r') c = ' ';
  return out;
}

void write_text_file(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    MOE_CHECK(out.good(), tmp.c_str(), "cannot open for writing (", std::strerror(errno), ")");
    out << text;
    out.flush();
    MOE_CHECK(out.good(), tmp.c_str(), "write failed (", std::strerror(errno), ")");
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  MOE_CHECK(!ec, path.c_str(), "cannot rename ", tmp, " into place (", ec.message(), ")");
}

// Streams one split's tokens into shards of at most shard_tokens tokens.
class ShardWriter {
 public:
  ShardWriter(std::string dir, Split split, uint64_t shard_tokens, bool quiet)
      : dir_(std::move(dir)), split_(split), cap_(shard_tokens), quiet_(quiet) {}
  void add(const std::vector<uint32_t>& ids) {
    for (uint32_t id : ids) {
      buf_.push_back(uint16_t(id));
      if (buf_.size() == cap_) flush();
    }
    total_ += ids.size();
  }
  uint64_t finish() {  // every split gets at least one shard, possibly empty
    if (!buf_.empty() || shards_ == 0) flush();
    return shards_;
  }
  uint64_t total() const { return total_; }

 private:
  void flush() {
    const std::string path = (fs::path(dir_) / shard_file_name(split_, shards_)).string();
    write_shard(path, buf_);
    if (!quiet_) std::cerr << "prepare: wrote " << path << " (" << buf_.size() << " tokens)\n";
    buf_.clear();
    ++shards_;
  }
  std::string dir_;
  Split split_;
  uint64_t cap_, shards_ = 0, total_ = 0;
  bool quiet_;
  std::vector<uint16_t> buf_;
};

}  // namespace

bool is_prepared(const std::string& dir) { return fs::exists(fs::path(dir) / "DONE"); }

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& dir) {
  const CorpusMeta m = read_meta(dir);
  std::unique_ptr<Tokenizer> tok;
  if (m.tokenizer == "bpe")
    tok = std::make_unique<BpeTokenizer>(BpeTokenizer::load((fs::path(dir) / "tokenizer.bpe").string()));
  else
    tok = make_tokenizer(m.tokenizer);
  MOE_CHECK(tok->vocab_size() == m.vocab_size, (dir + "/meta.toml").c_str(), "vocab_size = ", m.vocab_size,
            " but the '", m.tokenizer, "' tokenizer has ", tok->vocab_size(), "; ", prepare_remedy(dir, m.source));
  return tok;
}

bool same_tokenizer(const CorpusMeta& meta, const PrepareOptions& opt) {
  if (meta.tokenizer != opt.tokenizer) return false;
  return opt.tokenizer != "bpe" || meta.vocab_size == opt.bpe_vocab;
}

CorpusMeta write_prepared(const std::string& dir, const std::string& source,
                          const std::vector<Document>& docs, const PrepareOptions& opt) {
  MOE_CHECK(opt.shard_tokens > 0 && opt.shard_tokens <= uint64_t(INT32_MAX), "prepare",
            "shard_tokens ", opt.shard_tokens, " out of range [1, ", INT32_MAX, "]");
  std::unique_ptr<Tokenizer> tok;
  if (opt.tokenizer != "bpe") tok = make_tokenizer(opt.tokenizer);
  MOE_CHECK(opt.tokenizer != "bpe" || (opt.bpe_vocab >= 256 && opt.bpe_vocab <= 65536), "prepare",
            "bpe_vocab ", opt.bpe_vocab, " outside [256, 65536]");
  MOE_CHECK(!tok || tok->vocab_size() <= 65536, "prepare", "tokenizer '", tok->name(), "' has vocab ",
            tok->vocab_size(), ", more than uint16 llm.c shards can hold (65536)");
  std::error_code ec;
  fs::create_directories(dir, ec);
  MOE_CHECK(!ec && fs::is_directory(dir), dir.c_str(), "cannot create the output directory (",
            ec.message(), ")");
  // An earlier run may have stopped half-way: remove what it wrote (only our own file names).
  fs::remove(fs::path(dir) / "DONE", ec);
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string n = e.path().filename().string();
    const bool ours = n == "index.tsv" || n == "meta.toml" || n == "tokenizer.bpe" || n.ends_with(".tmp") ||
                      ((n.starts_with("train_") || n.starts_with("val_")) && n.ends_with(".bin"));
    if (ours) fs::remove(e.path(), ec);
  }

  if (opt.tokenizer == "bpe") {
    // Learned on the train split only, so validation text stays unseen.
    std::vector<std::string> texts;
    for (const Document& d : docs)
      if (d.split == Split::train) texts.push_back(d.text);
    if (!opt.quiet) std::cerr << "prepare: training a byte-level BPE of vocab " << opt.bpe_vocab << " on the train split\n";
    auto bpe = std::make_unique<BpeTokenizer>(BpeTokenizer::train(texts, opt.bpe_vocab));
    bpe->save((fs::path(dir) / "tokenizer.bpe").string());
    tok = std::move(bpe);
  }
  CorpusMeta meta;
  meta.source = source;
  meta.tokenizer = tok->name();
  meta.vocab_size = tok->vocab_size();
  meta.documents = docs.size();
  ShardWriter train(dir, Split::train, opt.shard_tokens, opt.quiet);
  ShardWriter val(dir, Split::val, opt.shard_tokens, opt.quiet);
  std::ostringstream index;
  index << "doc\tsplit\tgenre\tgenre_name\toffset\ttokens\n";
  std::map<std::string, std::string> genre_seen;
  for (const Document& d : docs) {
    if (!genre_seen.count(d.genre)) {
      genre_seen[d.genre] = d.genre_name;
      meta.genres.push_back(d.genre);
      meta.genre_names.push_back(d.genre_name);
    }
    std::vector<uint32_t> ids = tok->encode(d.text);
    ShardWriter& w = d.split == Split::train ? train : val;
    const uint64_t offset = w.total();
    w.add(ids);
    (d.split == Split::train ? meta.train_documents : meta.val_documents)++;
    index << tsv_field(d.name) << '\t' << split_name(d.split) << '\t' << tsv_field(d.genre) << '\t'
          << tsv_field(d.genre_name) << '\t' << offset << '\t' << ids.size() << '\n';
  }
  meta.train_tokens = train.total();
  meta.val_tokens = val.total();
  meta.train_shards = train.finish();
  meta.val_shards = val.finish();
  write_text_file((fs::path(dir) / "index.tsv").string(), index.str());

  std::ostringstream m;
  m << "# moetrain prepared corpus; written by `moetrain prepare " << source << "`\n"
    << "format = \"moetrain-prepared\"\nformat_version = 1\n"
    << "source = " << toml_str(source) << "\n"
    << "tokenizer = " << toml_str(meta.tokenizer) << "\n"
    << "vocab_size = " << meta.vocab_size << "\n"
    << "shard_format = \"llm.c\"\n"
    << "documents = " << meta.documents << "\n"
    << "train_documents = " << meta.train_documents << "\n"
    << "val_documents = " << meta.val_documents << "\n"
    << "train_tokens = " << meta.train_tokens << "\n"
    << "val_tokens = " << meta.val_tokens << "\n"
    << "train_shards = " << meta.train_shards << "\n"
    << "val_shards = " << meta.val_shards << "\n"
    << "genres = " << toml_list(meta.genres) << "\n"
    << "genre_names = " << toml_list(meta.genre_names) << "\n";
  write_text_file((fs::path(dir) / "meta.toml").string(), m.str());
  write_text_file((fs::path(dir) / "DONE").string(), "ok\n");
  if (!opt.quiet)
    std::cerr << "prepare: " << dir << " ready: " << meta.documents << " documents, "
              << meta.genres.size() << " genres, " << meta.train_tokens << " train / "
              << meta.val_tokens << " val tokens (" << meta.tokenizer << " tokenizer)\n";
  return meta;
}

namespace {
void check_prepared(const std::string& dir) {
  MOE_CHECK(fs::is_directory(dir), dir.c_str(), "data directory not found; run `moetrain prepare brown --out ",
            dir, "` (or `moetrain prepare text FILES... --out ", dir, "`)");
  MOE_CHECK(is_prepared(dir), dir.c_str(), "data directory is incomplete (no DONE marker); re-run `moetrain prepare brown --out ",
            dir, "` (or `prepare text`)");
}

template <class T>
T meta_get(const toml::table& t, const std::string& path, const char* key) {
  auto v = t[key].value<T>();
  MOE_CHECK(v.has_value(), path.c_str(), "key '", key, "' missing or of the wrong type");
  return *v;
}

std::vector<std::string> meta_list(const toml::table& t, const std::string& path, const char* key) {
  const toml::array* a = t[key].as_array();
  MOE_CHECK(a != nullptr, path.c_str(), "key '", key, "' missing or not an array");
  std::vector<std::string> out;
  for (const auto& e : *a) {
    auto s = e.value<std::string>();
    MOE_CHECK(s.has_value(), path.c_str(), "key '", key, "' must hold strings");
    out.push_back(*s);
  }
  return out;
}
}  // namespace

CorpusMeta read_meta(const std::string& dir) {
  check_prepared(dir);
  const std::string path = (fs::path(dir) / "meta.toml").string();
  toml::table t;
  try {
    t = toml::parse_file(path);
  } catch (const toml::parse_error& e) {
    MOE_FAIL(path.c_str(), "line ", e.source().begin.line, ": ", e.description());
  }
  CorpusMeta m;
  m.source = meta_get<std::string>(t, path, "source");
  m.tokenizer = meta_get<std::string>(t, path, "tokenizer");
  m.vocab_size = meta_get<int64_t>(t, path, "vocab_size");
  m.documents = meta_get<int64_t>(t, path, "documents");
  m.train_documents = meta_get<int64_t>(t, path, "train_documents");
  m.val_documents = meta_get<int64_t>(t, path, "val_documents");
  m.train_tokens = meta_get<int64_t>(t, path, "train_tokens");
  m.val_tokens = meta_get<int64_t>(t, path, "val_tokens");
  m.train_shards = meta_get<int64_t>(t, path, "train_shards");
  m.val_shards = meta_get<int64_t>(t, path, "val_shards");
  m.genres = meta_list(t, path, "genres");
  m.genre_names = meta_list(t, path, "genre_names");
  MOE_CHECK(m.genres.size() == m.genre_names.size(), path.c_str(), "genres and genre_names differ in length");
  return m;
}

std::vector<DocEntry> read_index(const std::string& dir) {
  check_prepared(dir);
  const std::string path = (fs::path(dir) / "index.tsv").string();
  std::ifstream in(path);
  MOE_CHECK(in.good(), path.c_str(), "cannot open (", std::strerror(errno), ")");
  std::string line;
  std::getline(in, line);
  MOE_CHECK(line == "doc\tsplit\tgenre\tgenre_name\toffset\ttokens", path.c_str(),
            "unexpected header line (expected doc, split, genre, genre_name, offset, tokens)");
  std::vector<DocEntry> out;
  for (int lineno = 2; std::getline(in, line); ++lineno) {
    if (line.empty()) continue;
    std::vector<std::string> f;
    std::stringstream ss(line);
    for (std::string x; std::getline(ss, x, '\t');) f.push_back(x);
    MOE_CHECK(f.size() == 6, path.c_str(), "line ", lineno, ": expected 6 tab-separated fields, got ", f.size());
    DocEntry e;
    e.name = f[0];
    e.split = parse_split(f[1]);
    e.genre = f[2];
    e.genre_name = f[3];
    try {
      e.offset = std::stoull(f[4]);
      e.tokens = std::stoull(f[5]);
    } catch (const std::exception&) {
      MOE_FAIL(path.c_str(), "line ", lineno, ": offset and tokens must be non-negative integers");
    }
    out.push_back(std::move(e));
  }
  return out;
}

std::vector<std::string> split_shard_paths(const std::string& dir, Split split, uint64_t count) {
  std::vector<std::string> out;
  for (uint64_t i = 0; i < count; ++i) out.push_back((fs::path(dir) / shard_file_name(split, i)).string());
  return out;
}

}  // namespace moe
