// Plain-text corpus preparation: files become documents of the genre "text", split by file
// (10+ files) or by a 90/10 cut of each file, then written by the shared writer.
#include "data/text_corpus.h"

#include <cctype>
#include <fstream>
#include <iostream>
#include <sstream>

#include "core/error.h"

namespace moe {

std::vector<Document> read_text_files(const std::vector<std::string>& files) {
  MOE_CHECK(!files.empty(), "prepare text", "no input files given");
  const bool by_file = files.size() >= 10;
  std::vector<Document> docs;
  for (size_t i = 0; i < files.size(); ++i) {
    std::ifstream in(files[i], std::ios::binary);
    MOE_CHECK(in.good(), (files[i]).c_str(), "cannot read the text file");
    std::stringstream ss;
    ss << in.rdbuf();
    Document d;
    d.name = files[i];
    d.genre = "text";
    d.genre_name = "text";
    d.text = ss.str();
    if (by_file) {
      d.split = (i % 10 == 9) ? Split::val : Split::train;
      docs.push_back(std::move(d));
      continue;
    }
    // Cut at whitespace so that no character (or future BPE merge) straddles the split.
    size_t cut = d.text.size() * 9 / 10;
    while (cut < d.text.size() && !std::isspace(static_cast<unsigned char>(d.text[cut]))) ++cut;
    Document v = d;
    v.split = Split::val;
    v.text = d.text.substr(cut);
    d.text.resize(cut);
    d.split = Split::train;
    docs.push_back(std::move(d));
    docs.push_back(std::move(v));
  }
  return docs;
}

CorpusMeta prepare_text(const std::vector<std::string>& files, const std::string& out_dir,
                        const PrepareOptions& opt) {
  if (is_prepared(out_dir)) {
    CorpusMeta m = read_meta(out_dir);
    std::vector<std::string> names;
    for (const DocEntry& e : read_index(out_dir))
      if (names.empty() || names.back() != e.name) names.push_back(e.name);
    MOE_CHECK(m.source == "text" && same_tokenizer(m, opt) && names == files, out_dir.c_str(),
              "already holds a prepared corpus of other input (source '", m.source, "', tokenizer '",
              m.tokenizer, "', ", names.size(), " files); choose another --out directory or delete this one");
    if (!opt.quiet) std::cerr << "prepare text: " << out_dir << " is already prepared (DONE); reusing it\n";
    return m;
  }
  std::vector<Document> docs = read_text_files(files);
  if (!opt.quiet)
    std::cerr << "prepare text: read " << files.size() << " files ("
              << (files.size() >= 10 ? "every 10th file is validation" : "last 10% of each file is validation")
              << ")\n";
  return write_prepared(out_dir, "text", docs, opt);
}

}  // namespace moe
