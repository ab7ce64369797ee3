// Byte-level BPE: pre-tokenization into chunks, merge training with incremental pair counts
// over the distinct chunks, greedy rank-ordered encoding, and the merges file format.
#include "data/bpe.h"

#include <algorithm>
#include <fstream>
#include <map>
#include <queue>
#include <sstream>
#include <unordered_map>

#include "core/error.h"

namespace moe {

namespace {

// Character classes of the pre-tokenizer; bytes >= 128 count as letters so that UTF-8
// sequences stay inside their word.
enum class CharClass { space, letter, digit, other };
CharClass class_of(unsigned char c) {
  if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v') return CharClass::space;
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c >= 128) return CharClass::letter;
  if (c >= '0' && c <= '9') return CharClass::digit;
  return CharClass::other;
}

uint64_t pair_key(uint32_t a, uint32_t b) { return (uint64_t(a) << 32) | b; }

}  // namespace

std::vector<std::string_view> bpe_chunks(std::string_view text) {
  std::vector<std::string_view> out;
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    const size_t start = i;
    CharClass c = class_of(text[i]);
    if (c == CharClass::space) {
      // " word" keeps its one leading space (as GPT-2's " ?\p{L}+"); other whitespace is a chunk.
      if (text[i] == ' ' && i + 1 < n && class_of(text[i + 1]) != CharClass::space) {
        c = class_of(text[i + 1]);
        i += 1;
      } else {
        size_t j = i;
        while (j < n && class_of(text[j]) == CharClass::space) ++j;
        if (j < n && j - i > 1 && text[j - 1] == ' ') --j;  // leave one space for the next word
        out.push_back(text.substr(i, j - i));
        i = j;
        continue;
      }
    }
    while (i < n && class_of(text[i]) == c) ++i;
    out.push_back(text.substr(start, i - start));
  }
  return out;
}

BpeTokenizer::BpeTokenizer(std::vector<std::pair<uint32_t, uint32_t>> merges) : merges_(std::move(merges)) {
  MOE_CHECK(merges_.size() <= 65536 - 256, "BpeTokenizer", merges_.size(), " merges exceed the uint16 token range");
  bytes_.reserve(256 + merges_.size());
  for (int b = 0; b < 256; ++b) bytes_.push_back(std::string(1, char(b)));
  for (size_t i = 0; i < merges_.size(); ++i) {
    const auto [a, b] = merges_[i];
    MOE_CHECK(a < 256 + i && b < 256 + i, "BpeTokenizer", "merge ", i, " (", a, ", ", b,
              ") uses an id that is not defined before it");
    bytes_.push_back(bytes_[a] + bytes_[b]);
    rank_.emplace(pair_key(a, b), uint32_t(i));  // a repeated pair keeps its first rank
  }
}

BpeTokenizer BpeTokenizer::train(const std::vector<std::string>& texts, int64_t vocab_size) {
  MOE_CHECK(vocab_size >= 256 && vocab_size <= 65536, "BpeTokenizer::train", "vocab_size ", vocab_size,
            " outside [256, 65536]");
  // Distinct chunks with their frequencies: merges are learned on those, not on the raw stream.
  std::unordered_map<std::string_view, int64_t> freq;
  for (const std::string& t : texts)
    for (std::string_view c : bpe_chunks(t)) freq[c]++;
  std::vector<std::pair<std::string_view, int64_t>> chunks(freq.begin(), freq.end());
  std::sort(chunks.begin(), chunks.end());  // deterministic order regardless of hashing
  std::vector<std::vector<uint32_t>> words(chunks.size());
  std::vector<int64_t> counts(chunks.size());
  std::unordered_map<uint64_t, int64_t> pairs;
  std::unordered_map<uint64_t, std::vector<uint32_t>> where;  // pair -> words that had it (may be stale)
  for (size_t w = 0; w < chunks.size(); ++w) {
    counts[w] = chunks[w].second;
    for (unsigned char c : chunks[w].first) words[w].push_back(c);
    for (size_t k = 0; k + 1 < words[w].size(); ++k) {
      const uint64_t key = pair_key(words[w][k], words[w][k + 1]);
      pairs[key] += counts[w];
      where[key].push_back(uint32_t(w));
    }
  }
  // Max-heap of (count, pair) with lazy deletion: an entry is live while it matches `pairs`.
  // Ties go to the smaller pair key, so training does not depend on hash order.
  auto worse = [](const std::pair<int64_t, uint64_t>& x, const std::pair<int64_t, uint64_t>& y) {
    return x.first != y.first ? x.first < y.first : x.second > y.second;
  };
  std::priority_queue<std::pair<int64_t, uint64_t>, std::vector<std::pair<int64_t, uint64_t>>, decltype(worse)> heap(worse);
  for (const auto& [key, c] : pairs) heap.emplace(c, key);
  std::vector<uint64_t> touched;
  std::vector<std::pair<uint32_t, uint32_t>> merges;
  while (int64_t(256 + merges.size()) < vocab_size) {
    while (!heap.empty()) {
      auto it = pairs.find(heap.top().second);
      if (it != pairs.end() && it->second == heap.top().first) break;
      heap.pop();
    }
    if (heap.empty() || heap.top().first <= 1) break;  // a pair seen once is not worth a token
    const uint64_t best = heap.top().second;
    heap.pop();
    const uint32_t a = uint32_t(best >> 32), b = uint32_t(best), id = uint32_t(256 + merges.size());
    merges.emplace_back(a, b);
    std::vector<uint32_t> affected = std::move(where[best]);
    where.erase(best);
    std::sort(affected.begin(), affected.end());
    affected.erase(std::unique(affected.begin(), affected.end()), affected.end());
    for (uint32_t w : affected) {
      std::vector<uint32_t>& s = words[w];
      bool has = false;
      for (size_t k = 0; k + 1 < s.size() && !has; ++k) has = s[k] == a && s[k + 1] == b;
      if (!has) continue;
      for (size_t k = 0; k + 1 < s.size(); ++k) {
        auto it = pairs.find(pair_key(s[k], s[k + 1]));
        touched.push_back(it->first);
        if ((it->second -= counts[w]) == 0) pairs.erase(it);
      }
      std::vector<uint32_t> merged;
      for (size_t k = 0; k < s.size(); ++k) {
        if (k + 1 < s.size() && s[k] == a && s[k + 1] == b) {
          merged.push_back(id);
          ++k;
        } else {
          merged.push_back(s[k]);
        }
      }
      s = std::move(merged);
      for (size_t k = 0; k + 1 < s.size(); ++k) {
        const uint64_t key = pair_key(s[k], s[k + 1]);
        pairs[key] += counts[w];
        touched.push_back(key);
        if (s[k] == id || s[k + 1] == id) where[key].push_back(w);
      }
    }
    std::sort(touched.begin(), touched.end());
    touched.erase(std::unique(touched.begin(), touched.end()), touched.end());
    for (uint64_t key : touched)
      if (auto it = pairs.find(key); it != pairs.end()) heap.emplace(it->second, key);
    touched.clear();
  }
  return BpeTokenizer(std::move(merges));
}

std::vector<uint32_t> BpeTokenizer::encode_chunk(std::string_view chunk) const {
  std::vector<uint32_t> s(chunk.begin(), chunk.end());
  for (auto& v : s) v &= 0xff;  // chars may be signed
  while (s.size() >= 2) {
    // The earliest-learned merge present in the chunk is applied next, as in training.
    uint32_t best = UINT32_MAX;
    for (size_t k = 0; k + 1 < s.size(); ++k) {
      auto it = rank_.find(pair_key(s[k], s[k + 1]));
      if (it != rank_.end() && it->second < best) best = it->second;
    }
    if (best == UINT32_MAX) break;
    const auto [a, b] = merges_[best];
    std::vector<uint32_t> merged;
    merged.reserve(s.size());
    for (size_t k = 0; k < s.size(); ++k) {
      if (k + 1 < s.size() && s[k] == a && s[k + 1] == b) {
        merged.push_back(256 + best);
        ++k;
      } else {
        merged.push_back(s[k]);
      }
    }
    s = std::move(merged);
  }
  return s;
}

std::vector<uint32_t> BpeTokenizer::encode(std::string_view text) const {
  std::vector<uint32_t> out;
  std::unordered_map<std::string_view, std::vector<uint32_t>> cache;  // chunks repeat a lot
  for (std::string_view c : bpe_chunks(text)) {
    auto it = cache.find(c);
    if (it == cache.end()) it = cache.emplace(c, encode_chunk(c)).first;
    out.insert(out.end(), it->second.begin(), it->second.end());
  }
  return out;
}

std::string BpeTokenizer::decode(std::span<const uint32_t> ids) const {
  std::string out;
  for (size_t i = 0; i < ids.size(); ++i) {
    MOE_CHECK(ids[i] < bytes_.size(), "BpeTokenizer::decode", "token ", ids[i], " at position ", i,
              " is outside the vocabulary [0, ", bytes_.size(), ")");
    out += bytes_[ids[i]];
  }
  return out;
}

void BpeTokenizer::save(const std::string& path) const {
  std::ofstream out(path, std::ios::trunc);
  MOE_CHECK(out.good(), path.c_str(), "cannot open for writing");
  out << "moetrain-bpe 1\n";
  for (const auto& [a, b] : merges_) out << a << ' ' << b << '\n';
  out.flush();
  MOE_CHECK(out.good(), path.c_str(), "write failed");
}

BpeTokenizer BpeTokenizer::load(const std::string& path) {
  std::ifstream in(path);
  MOE_CHECK(in.good(), path.c_str(), "cannot open the BPE merges file");
  std::string line;
  std::getline(in, line);
  MOE_CHECK(line == "moetrain-bpe 1", path.c_str(), "line 1: expected 'moetrain-bpe 1' (a moetrain BPE merges file)");
  std::vector<std::pair<uint32_t, uint32_t>> merges;
  for (int lineno = 2; std::getline(in, line); ++lineno) {
    std::istringstream ls(line);
    uint32_t a = 0, b = 0;
    std::string rest;
    MOE_CHECK((ls >> a >> b) && !(ls >> rest), path.c_str(), "line ", lineno, ": expected two token ids");
    MOE_CHECK(a < 256 + merges.size() && b < 256 + merges.size(), path.c_str(), "line ", lineno, ": merge (", a, ", ", b,
              ") uses an id not defined before it");
    merges.emplace_back(a, b);
  }
  return BpeTokenizer(std::move(merges));
}

}  // namespace moe
