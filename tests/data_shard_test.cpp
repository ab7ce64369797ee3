// Token files and the tokenizer: llm.c shard round trip, raw uint16/uint32 readers, and the
// one-line errors for missing, truncated and foreign files.
#include <gtest/gtest.h>

#include <cstring>
#include <numeric>

#include "data/shard.h"
#include "data/tokenizer.h"
#include "tests/data_test_util.h"

using namespace moe;
using test::fresh_dir;

TEST(DataShard, WriteReadRoundTripAndHeaderLayout) {
  const std::string dir = fresh_dir("shard_roundtrip");
  std::vector<uint16_t> tokens(1237);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = uint16_t((i * 7919u + 13u) % 65536u);
  tokens[5] = 65535;
  const std::string path = dir + "/train_000.bin";
  write_shard(path, tokens);
  // The header is llm.c's: 256 int32, magic, version, count, zeros.
  const std::string raw = test::read_bytes(path);
  ASSERT_EQ(raw.size(), 1024u + 2 * tokens.size());
  int32_t header[256];
  std::memcpy(header, raw.data(), sizeof(header));
  EXPECT_EQ(header[0], 20240520);
  EXPECT_EQ(header[1], 1);
  EXPECT_EQ(header[2], 1237);
  for (int i = 3; i < 256; ++i) EXPECT_EQ(header[i], 0) << i;
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));

  TokenFile f = TokenFile::open(path);
  ASSERT_EQ(f.size(), tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) ASSERT_EQ(f.at(i), tokens[i]) << i;
  std::vector<int32_t> out(100);
  f.copy_to(1100, 100, out.data());
  for (size_t i = 0; i < 100; ++i) EXPECT_EQ(out[i], int32_t(tokens[1100 + i]));
  EXPECT_ERROR_WITH(f.copy_to(1200, 100, out.data()), path, "outside", "1237");

  write_shard(dir + "/empty.bin", {});
  EXPECT_EQ(TokenFile::open(dir + "/empty.bin").size(), 0u);
}

TEST(DataShard, RawUint16AndUint32Files) {
  const std::string dir = fresh_dir("shard_raw");
  std::vector<uint16_t> a = {0, 1, 65535, 300, 7};
  std::vector<uint32_t> b = {0, 70000, 100257, 5};
  test::write_bytes(dir + "/a.u16", std::string(reinterpret_cast<const char*>(a.data()), a.size() * 2));
  test::write_bytes(dir + "/b.u32", std::string(reinterpret_cast<const char*>(b.data()), b.size() * 4));
  TokenFile fa = TokenFile::open(dir + "/a.u16", TokenFormat::raw_u16);
  TokenFile fb = TokenFile::open(dir + "/b.u32", parse_token_format("u32"));
  ASSERT_EQ(fa.size(), 5u);
  ASSERT_EQ(fb.size(), 4u);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(fa.at(i), a[i]);
  for (size_t i = 0; i < b.size(); ++i) EXPECT_EQ(fb.at(i), b[i]);
  std::vector<int32_t> out(4);
  fb.copy_to(0, 4, out.data());
  EXPECT_EQ(out, (std::vector<int32_t>{0, 70000, 100257, 5}));
  // 5 uint16 tokens are 10 bytes: not a whole number of uint32 tokens.
  EXPECT_ERROR_WITH(TokenFile::open(dir + "/a.u16", TokenFormat::raw_u32), dir + "/a.u16", "10 bytes",
                    "4-byte tokens");
  EXPECT_ERROR_WITH(parse_token_format("u8"), "u8", "llmc, u16 or u32");
}

TEST(DataShard, MissingTruncatedAndForeignFilesAreOneLineErrors) {
  const std::string dir = fresh_dir("shard_errors");
  const std::string remedy = "re-run `moetrain prepare brown`";
  EXPECT_ERROR_WITH(TokenFile::open(dir + "/nope.bin", TokenFormat::llmc, remedy), dir + "/nope.bin",
                    "cannot open", "No such file", remedy);

  std::vector<uint16_t> tokens(500, 42);
  const std::string good = dir + "/good.bin";
  write_shard(good, tokens);
  const std::string raw = test::read_bytes(good);

  // Header says 500 tokens, file holds 400.
  const std::string trunc = dir + "/trunc.bin";
  test::write_bytes(trunc, raw.substr(0, 1024 + 800));
  EXPECT_ERROR_WITH(TokenFile::open(trunc, TokenFormat::llmc, remedy), trunc, "truncated",
                    "header says 500 tokens (2024 bytes)", "has 1824 bytes", remedy);
  // Shorter than the header itself.
  test::write_bytes(trunc, raw.substr(0, 100));
  EXPECT_ERROR_WITH(TokenFile::open(trunc), trunc, "truncated", "1024 bytes");
  // Bytes beyond the announced tokens.
  test::write_bytes(trunc, raw + "xx");
  EXPECT_ERROR_WITH(TokenFile::open(trunc), trunc, "2 unexpected bytes", "expected 2024 bytes");

  // A foreign file: wrong magic, then the right magic with another version.
  std::string foreign = raw;
  int32_t bad = 12345;
  std::memcpy(foreign.data(), &bad, 4);
  const std::string fpath = dir + "/foreign.bin";
  test::write_bytes(fpath, foreign);
  EXPECT_ERROR_WITH(TokenFile::open(fpath, TokenFormat::llmc, remedy), fpath,
                    "bad magic 12345 (expected 20240520, an llm.c shard)", remedy);
  std::string v2 = raw;
  int32_t version = 2;
  std::memcpy(v2.data() + 4, &version, 4);
  test::write_bytes(fpath, v2);
  EXPECT_ERROR_WITH(TokenFile::open(fpath), fpath, "version 2", "expected 1");
}

TEST(DataTokenizer, ByteRoundTripAndVocab) {
  auto tok = make_tokenizer("byte");
  EXPECT_EQ(tok->name(), "byte");
  EXPECT_EQ(tok->vocab_size(), 256);
  std::string all(256, '\0');
  std::iota(all.begin(), all.end(), char(0));
  const std::string text = "The Fulton County Grand Jury said \"no evidence\".\n" + all + "caf\xc3\xa9";
  std::vector<uint32_t> ids = tok->encode(text);
  ASSERT_EQ(ids.size(), text.size());
  EXPECT_EQ(ids[0], uint32_t('T'));
  EXPECT_EQ(ids[ids.size() - 1], 0xa9u);  // bytes, not code points
  for (uint32_t id : ids) EXPECT_LT(id, 256u);
  EXPECT_EQ(tok->decode(ids), text);
  std::vector<uint32_t> bad = {65, 256};
  EXPECT_ERROR_WITH(tok->decode(bad), "token 256 at position 1", "[0, 256)");
  EXPECT_ERROR_WITH(make_tokenizer("gpt2"), "unknown tokenizer 'gpt2'", "byte");
}
