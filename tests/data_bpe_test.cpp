// Byte-level BPE: pre-tokenizer chunks, the merges learned on a tiny corpus (worked by hand),
// lossless round trips, the merges file, and a prepared corpus tokenized with a trained BPE.
#include <gtest/gtest.h>

#include <numeric>

#include "data/bpe.h"
#include "data/dataset.h"
#include "data/text_corpus.h"
#include "tests/data_test_util.h"

using namespace moe;

TEST(DataBpe, ChunksKeepLeadingSpaceAndCoverText) {
  const std::string text = "Hello, world  42!\n\nok";
  std::vector<std::string_view> c = bpe_chunks(text);
  EXPECT_EQ(std::vector<std::string>(c.begin(), c.end()),
            (std::vector<std::string>{"Hello", ",", " world", " ", " 42", "!", "\n\n", "ok"}));
  std::string all(256, '\0');
  std::iota(all.begin(), all.end(), char(0));
  const std::string bytes = all + " caf\xc3\xa9 x";
  std::string joined;
  for (auto v : bpe_chunks(bytes)) joined += v;
  EXPECT_EQ(joined, bytes);
}

TEST(DataBpe, LearnsMostFrequentPairsWithDeterministicTies) {
  // Chunks: "the", " cat", " the", " hat", " the", " bat". Pairs (a,t), (h,e), (t,h) occur 3
  // times each: ties go to the smallest ids, so (a,t) then (h,e), then (t, "he") with 3.
  BpeTokenizer bpe = BpeTokenizer::train({"the cat the hat the bat"}, 259);
  ASSERT_EQ(bpe.vocab_size(), 259);
  using P = std::pair<uint32_t, uint32_t>;
  EXPECT_EQ(bpe.merges(), (std::vector<P>{{'a', 't'}, {'h', 'e'}, {'t', 258 - 1}}));
  EXPECT_EQ(bpe.token_bytes(258), "the");
  std::vector<uint32_t> ids = bpe.encode("the hat");
  EXPECT_EQ(ids, (std::vector<uint32_t>{258, ' ', 'h', 256}));
  // Training stops when no pair occurs twice.
  EXPECT_EQ(BpeTokenizer::train({"abcdef"}, 1000).vocab_size(), 256);
}

TEST(DataBpe, RoundTripAndMergesFile) {
  // Pseudo-words of 1-4 syllables: enough distinct pairs for 144 merges.
  const char* syl[] = {"ka", "to", "ri", "men", "sol", "ve", "da", "lu", "qu", "ix", "th", "er"};
  std::string corpus;
  uint32_t x = 12345;
  for (int i = 0; i < 4000; ++i) {
    x = x * 1664525u + 1013904223u;
    const int n = 1 + int((x >> 28) % 4);
    corpus += i % 17 == 0 ? ". " : " ";
    for (int k = 0; k < n; ++k) {
      x = x * 1664525u + 1013904223u;
      corpus += syl[(x >> 24) % 12];
    }
  }
  BpeTokenizer bpe = BpeTokenizer::train({corpus}, 400);
  EXPECT_EQ(bpe.vocab_size(), 400);
  std::string all(256, '\0');
  std::iota(all.begin(), all.end(), char(0));
  for (const std::string& t : {corpus, all, std::string("caf\xc3\xa9  \n\t jury-said!!"), std::string()}) {
    std::vector<uint32_t> ids = bpe.encode(t);
    for (uint32_t id : ids) ASSERT_LT(id, 400u);
    EXPECT_EQ(bpe.decode(ids), t);
  }
  EXPECT_LT(bpe.encode(corpus).size() * 3, corpus.size());  // compresses its training text > 3x

  const std::string dir = test::fresh_dir("bpe_file");
  bpe.save(dir + "/tokenizer.bpe");
  BpeTokenizer back = BpeTokenizer::load(dir + "/tokenizer.bpe");
  EXPECT_EQ(back.merges(), bpe.merges());
  EXPECT_EQ(back.encode(corpus), bpe.encode(corpus));
  test::write_bytes(dir + "/bad.bpe", "moetrain-bpe 1\n97 116\n300 5\n");
  EXPECT_ERROR_WITH(BpeTokenizer::load(dir + "/bad.bpe"), dir + "/bad.bpe", "line 3", "(300, 5)");
  test::write_bytes(dir + "/bad.bpe", "#version: 0.2\n");
  EXPECT_ERROR_WITH(BpeTokenizer::load(dir + "/bad.bpe"), "line 1", "moetrain-bpe 1");
  std::vector<uint32_t> oov = {400};
  EXPECT_ERROR_WITH(bpe.decode(oov), "token 400", "[0, 400)");
}

TEST(DataBpe, PreparedCorpusWithTrainedBpe) {
  const std::string src = test::fresh_dir("bpe_text_src"), out = test::fresh_dir("bpe_text_out");
  std::string text;
  for (int i = 0; i < 300; ++i) text += "Mike remained in trance; there was much to grok. Sentence " + std::to_string(i) + ".\n";
  test::write_bytes(src + "/a.txt", text);
  PrepareOptions opt;
  opt.quiet = true;
  opt.tokenizer = "bpe";
  opt.bpe_vocab = 320;
  CorpusMeta m = prepare_text({src + "/a.txt"}, out, opt);
  EXPECT_EQ(m.tokenizer, "bpe");
  EXPECT_EQ(m.vocab_size, 320);
  EXPECT_LT(m.train_tokens + m.val_tokens, text.size() / 3);
  auto tok = load_tokenizer(out);
  EXPECT_EQ(tok->name(), "bpe");
  EXPECT_EQ(tok->vocab_size(), 320);
  std::string decoded;
  for (Split s : {Split::train, Split::val}) {
    auto d = TokenDataset::open_prepared(out, s);
    std::vector<int32_t> ids(d->size());
    d->copy(0, ids.size(), ids.data());
    std::vector<uint32_t> u(ids.begin(), ids.end());
    decoded += tok->decode(u);
  }
  EXPECT_EQ(decoded, text);
  // Asking for another vocab is not a silent reuse.
  opt.bpe_vocab = 512;
  EXPECT_ERROR_WITH(prepare_text({src + "/a.txt"}, out, opt), "already holds");
  EXPECT_ERROR_WITH(make_tokenizer("bpe"), "trained per corpus", "load_tokenizer");
}
