// prepare_text on a small temporary corpus: split rules, multi-shard layout, index consistency,
// idempotent reuse, and the errors a trainer sees for a missing, incomplete or damaged directory.
#include <gtest/gtest.h>

#include <filesystem>

#include "data/dataset.h"
#include "data/text_corpus.h"
#include "tests/data_test_util.h"

using namespace moe;
namespace fs = std::filesystem;

namespace {
std::string sample_text(int i, size_t words) {
  std::string s;
  for (size_t w = 0; w < words; ++w) s += "word" + std::to_string((w * 31 + i) % 97) + (w % 11 == 10 ? ".\n" : " ");
  return s;
}
PrepareOptions small_shards() {
  PrepareOptions o;
  o.shard_tokens = 1000;
  o.quiet = true;
  return o;
}
std::string stream_text(const TokenDataset& d, uint64_t begin, uint64_t n) {
  std::vector<int32_t> ids(n);
  d.copy(begin, n, ids.data());
  return std::string(ids.begin(), ids.end());
}
}  // namespace

TEST(DataPrepare, TextFewFilesCutNinetyTenAcrossShards) {
  const std::string src = test::fresh_dir("text_src3"), out = test::fresh_dir("text_out3");
  std::vector<std::string> files, texts;
  for (int i = 0; i < 3; ++i) {
    texts.push_back(sample_text(i, 400 + 50 * i));
    files.push_back(src + "/f" + std::to_string(i) + ".txt");
    test::write_bytes(files.back(), texts.back());
  }
  CorpusMeta m = prepare_text(files, out, small_shards());
  ASSERT_TRUE(is_prepared(out));
  EXPECT_EQ(m.source, "text");
  EXPECT_EQ(m.genres, (std::vector<std::string>{"text"}));
  EXPECT_EQ(m.documents, 6u);
  EXPECT_EQ(m.train_documents, 3u);
  EXPECT_EQ(m.val_documents, 3u);
  uint64_t total = 0;
  for (auto& t : texts) total += t.size();
  EXPECT_EQ(m.train_tokens + m.val_tokens, total);
  EXPECT_EQ(m.train_shards, (m.train_tokens + 999) / 1000);
  EXPECT_GE(m.train_shards, 3u);
  for (uint64_t i = 0; i < m.train_shards; ++i) EXPECT_TRUE(fs::exists(out + "/" + shard_file_name(Split::train, i)));
  EXPECT_FALSE(fs::exists(out + "/" + shard_file_name(Split::train, m.train_shards)));

  // Each file = its train part + its val part; the cut is at whitespace near 90%.
  auto train = TokenDataset::open_prepared(out, Split::train);
  auto val = TokenDataset::open_prepared(out, Split::val);
  ASSERT_EQ(train->documents().size(), 3u);
  ASSERT_EQ(val->documents().size(), 3u);
  for (int i = 0; i < 3; ++i) {
    const DocSpan& a = train->documents()[i];
    const DocSpan& b = val->documents()[i];
    const std::string joined = stream_text(*train, a.offset, a.tokens) + stream_text(*val, b.offset, b.tokens);
    EXPECT_EQ(joined, texts[i]) << files[i];  // read across shard boundaries
    EXPECT_GE(a.tokens, texts[i].size() * 9 / 10);
    EXPECT_LT(double(a.tokens) / double(texts[i].size()), 0.92);
    EXPECT_TRUE(std::isspace(static_cast<unsigned char>(texts[i][a.tokens])));
  }
  std::vector<DocEntry> index = read_index(out);
  ASSERT_EQ(index.size(), 6u);
  EXPECT_EQ(index[0].name, files[0]);
  EXPECT_EQ(index[1].split, Split::val);
  EXPECT_EQ(index[2].offset, index[0].tokens);
}

TEST(DataPrepare, TextManyFilesSplitByFileAndReuse) {
  const std::string src = test::fresh_dir("text_src12"), out = test::fresh_dir("text_out12");
  std::vector<std::string> files;
  for (int i = 0; i < 12; ++i) {
    files.push_back(src + "/f" + std::to_string(i) + ".txt");
    test::write_bytes(files.back(), sample_text(i, 60));
  }
  CorpusMeta m = prepare_text(files, out, small_shards());
  EXPECT_EQ(m.documents, 12u);
  EXPECT_EQ(m.val_documents, 1u);
  std::vector<DocEntry> index = read_index(out);
  EXPECT_EQ(index[9].split, Split::val);
  EXPECT_EQ(index[9].name, files[9]);
  EXPECT_EQ(index[9].offset, 0u);
  EXPECT_EQ(m.val_tokens, index[9].tokens);

  // Reused when complete: nothing is rewritten.
  const auto stamp = fs::last_write_time(out + "/meta.toml");
  CorpusMeta again = prepare_text(files, out, small_shards());
  EXPECT_EQ(again.train_tokens, m.train_tokens);
  EXPECT_EQ(fs::last_write_time(out + "/meta.toml"), stamp);
  // Other input into the same directory is refused instead of silently mixing corpora.
  std::vector<std::string> fewer(files.begin(), files.begin() + 5);
  EXPECT_ERROR_WITH(prepare_text(fewer, out, small_shards()), out, "already holds", "another --out");

  // An interrupted run (no DONE) is redone from scratch, removing its stale shards.
  fs::remove(out + "/DONE");
  test::write_bytes(out + "/train_007.bin", "stale");
  CorpusMeta redo = prepare_text(files, out, small_shards());
  EXPECT_EQ(redo.train_tokens, m.train_tokens);
  EXPECT_FALSE(fs::exists(out + "/train_007.bin"));
  EXPECT_ERROR_WITH(prepare_text({src + "/missing.txt"}, test::fresh_dir("text_out_missing")),
                    src + "/missing.txt", "cannot read");
}

TEST(DataPrepare, MissingIncompleteAndDamagedDirectoriesNameTheFix) {
  const std::string missing = std::string(MOE_BINARY_DIR) + "/test_data/no_such_corpus";
  fs::remove_all(missing);
  EXPECT_ERROR_WITH(TokenDataset::open_prepared(missing, Split::train), missing, "not found",
                    "moetrain prepare brown --out " + missing);

  const std::string src = test::fresh_dir("text_src_dmg"), out = test::fresh_dir("text_out_dmg");
  test::write_bytes(src + "/a.txt", sample_text(1, 700));
  CorpusMeta m = prepare_text({src + "/a.txt"}, out, small_shards());
  ASSERT_GE(m.train_shards, 2u);

  // Truncated shard: the error names the shard and the text preparer's command.
  const std::string shard = out + "/train_001.bin";
  const std::string raw = test::read_bytes(shard);
  test::write_bytes(shard, raw.substr(0, raw.size() - 10));
  EXPECT_ERROR_WITH(TokenDataset::open_prepared(out, Split::train), shard, "truncated",
                    "moetrain prepare text FILES... --out " + out);
  test::write_bytes(shard, raw);
  EXPECT_NO_THROW(TokenDataset::open_prepared(out, Split::train));

  // meta.toml disagreeing with the shards.
  const std::string meta = test::read_bytes(out + "/meta.toml");
  std::string bad = meta;
  const std::string key = "train_tokens = " + std::to_string(m.train_tokens);
  bad.replace(bad.find(key), key.size(), "train_tokens = 5");
  test::write_bytes(out + "/meta.toml", bad);
  EXPECT_ERROR_WITH(TokenDataset::open_prepared(out, Split::train), out + "/meta.toml", "train_tokens = 5",
                    "shards hold " + std::to_string(m.train_tokens));
  test::write_bytes(out + "/meta.toml", meta);

  fs::remove(out + "/DONE");
  EXPECT_ERROR_WITH(TokenDataset::open_prepared(out, Split::val), out, "incomplete", "no DONE", "moetrain prepare");
}

TEST(DataPrepare, RawTokenFilesAsOneStream) {
  const std::string dir = test::fresh_dir("raw_stream");
  std::vector<uint32_t> a = {1, 2, 3}, b = {100000, 5};
  test::write_bytes(dir + "/a.u32", std::string(reinterpret_cast<const char*>(a.data()), 12));
  test::write_bytes(dir + "/b.u32", std::string(reinterpret_cast<const char*>(b.data()), 8));
  auto d = TokenDataset::open_files({dir + "/a.u32", dir + "/b.u32"}, TokenFormat::raw_u32);
  ASSERT_EQ(d->size(), 5u);
  std::vector<int32_t> ids(4);
  d->copy(1, 4, ids.data());
  EXPECT_EQ(ids, (std::vector<int32_t>{2, 3, 100000, 5}));
  EXPECT_EQ(d->genre_names(), (std::vector<std::string>{"all"}));
  EXPECT_EQ(d->genre_at(4), 0);
  EXPECT_EQ(d->vocab_size(), 0);
  EXPECT_ERROR_WITH(d->copy(3, 3, ids.data()), "outside the stream of 5 tokens");
}
