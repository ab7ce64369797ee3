// A deterministic English-like corpus for trainer-level tests: sentences from a 20-word
// vocabulary drawn with Philox, written and prepared (byte tokens) under build/test_data/<name>.
#pragma once
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

#include "core/rng.h"
#include "data/text_corpus.h"

namespace moe::test {

// Writes <binary dir>/test_data/<name>/corpus.txt and prepares it (reused when already prepared
// from the same text, so test processes running side by side can share it); returns the
// prepared directory.
inline std::string prepare_tiny_corpus(const std::string& name, uint64_t seed) {
  namespace fs = std::filesystem;
  fs::path d = fs::path(MOE_BINARY_DIR) / "test_data" / name;
  fs::create_directories(d);
  fs::path txt = d / "corpus.txt";
  const char* words[] = {"the", "expert", "router", "sends", "each", "token", "to", "a", "few", "experts",
                         "and", "balance", "keeps", "loads", "even", "while", "training", "goes", "on", "model"};
  Philox rng(seed, 1);
  std::ofstream f(txt);
  for (int s = 0; s < 1500; ++s) {
    int n = 4 + int(rng.below(8));
    for (int w = 0; w < n; ++w) f << (w ? " " : "") << words[rng.below(20)];
    f << ".\n";
  }
  f.close();
  PrepareOptions po;
  po.quiet = true;
  prepare_text({txt.string()}, (d / "prepared").string(), po);
  return (d / "prepared").string();
}

}  // namespace moe::test
