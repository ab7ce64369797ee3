// Plain text files as a corpus (one genre, "text"): split train/val by file or by a 90/10 cut,
// then tokenized and written like Brown (data/prepared.h).
#pragma once
#include <string>
#include <vector>

#include "data/prepared.h"

namespace moe {

// Each file is a document. With 10 or more files, every 10th file (in the order given) goes to
// val; with fewer, each file is cut in two: the text up to the first whitespace at or after
// 90% of its bytes is a train document and the rest a val document (both named by the file).
std::vector<Document> read_text_files(const std::vector<std::string>& files);

// Prepares the files into out_dir (layout in data/prepared.h). A complete directory prepared
// from the same file list with the same tokenizer is reused.
CorpusMeta prepare_text(const std::vector<std::string>& files, const std::string& out_dir,
                        const PrepareOptions& opt = {});

}  // namespace moe
