// The statistics of `moetrain compare`, read from a run directory's routing.h5 (balance),
// metrics.jsonl (perplexity, speed) and recipe.toml (strategy); tables in markdown and CSV.
#include "recipes/compare.h"

#include <toml++/toml.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <sstream>

#include "checkpoints/hdf5_util.h"
#include "core/error.h"

namespace fs = std::filesystem;

namespace moe {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

[[noreturn]] void run_error(const fs::path& dir, const std::string& file, const std::string& what) {
  throw Error("run " + dir.string() + ": " + file + ": " + what);
}

// ---- a flat-object JSON reader: metrics.jsonl rows hold only numbers and strings ----
struct JsonCursor {
  const std::string& s;
  size_t i = 0;
  const std::string& where;
  void ws() {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r' || s[i] == '\n')) ++i;
  }
  [[noreturn]] void fail(const std::string& what) const {
    throw Error(where + ": " + what + " at column " + std::to_string(i + 1));
  }
  void expect(char c) {
    ws();
    if (i >= s.size() || s[i] != c) fail(std::string("expected '") + c + "'");
    ++i;
  }
  std::string string() {
    expect('"');
    std::string o;
    while (i < s.size() && s[i] != '"') {
      if (s[i] == '\\') {
        if (++i >= s.size()) break;
        o += s[i] == 'n' ? '\n' : s[i] == 't' ? '\t' : s[i];
      } else {
        o += s[i];
      }
      ++i;
    }
    if (i >= s.size()) fail("unterminated string");
    ++i;
    return o;
  }
  double number() {
    ws();
    for (auto [word, v] : {std::pair<const char*, double>{"NaN", kNaN},
                           {"Infinity", std::numeric_limits<double>::infinity()},
                           {"-Infinity", -std::numeric_limits<double>::infinity()}}) {
      size_t n = std::char_traits<char>::length(word);
      if (s.compare(i, n, word) == 0) {
        i += n;
        return v;
      }
    }
    const char* b = s.c_str() + i;
    char* e = nullptr;
    double v = std::strtod(b, &e);
    if (e == b) fail("expected a number or a string");
    i += size_t(e - b);
    return v;
  }
};

std::vector<int> moe_layers(const h5::File& f) {
  std::vector<int> layers;
  for (const h5::Child& c : f.children("/"))
    if (c.kind == h5::ObjKind::group && c.name.rfind("layer_", 0) == 0) layers.push_back(std::atoi(c.name.c_str() + 6));
  std::sort(layers.begin(), layers.end());
  return layers;
}

std::string strategy_of(const fs::path& dir) {
  fs::path p = dir / "recipe.toml";
  if (!fs::exists(p)) run_error(dir, "recipe.toml", "missing (not a moetrain run directory?)");
  try {
    toml::table t = toml::parse_file(p.string());
    // The resolved recipe always has router.balance; an older file without it ran the default.
    return t["router"]["balance"].value<std::string>().value_or("aux_loss");
  } catch (const toml::parse_error& e) {
    run_error(dir, "recipe.toml", std::string("not valid TOML: ") + std::string(e.description()));
  }
}

void read_metrics(const fs::path& dir, RunSummary& s) {
  fs::path p = dir / "metrics.jsonl";
  std::ifstream in(p);
  if (!in) run_error(dir, "metrics.jsonl", "missing or unreadable");
  std::string line;
  int64_t lineno = 0, train_rows = 0, prev_tokens = 0;
  double tps_sum = 0, wall = 0;
  int64_t tps_n = 0;
  s.final_val_ppl = kNaN;
  while (std::getline(in, line)) {
    ++lineno;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    JsonRow r = parse_json_row(line, "run " + dir.string() + ": metrics.jsonl:" + std::to_string(lineno));
    std::string kind = r.strings.count("kind") ? r.strings["kind"] : "";
    if (kind == "eval" && r.numbers.count("val_ppl")) s.final_val_ppl = r.numbers["val_ppl"];
    if (kind != "train") continue;
    double tps = r.numbers.count("tokens_per_s") ? r.numbers["tokens_per_s"] : kNaN;
    int64_t tokens = r.numbers.count("tokens_seen") ? int64_t(r.numbers["tokens_seen"]) : prev_tokens;
    // Each row's tokens_per_s covers the interval since the previous row, so new tokens / rate
    // is that interval's duration (startup before step 1 and the final eval are not in it).
    if (tps > 0 && std::isfinite(tps)) wall += double(tokens - prev_tokens) / tps;
    prev_tokens = tokens;
    // The first row's rate includes warm-up (allocation, first-touch pages): left out of the mean.
    if (train_rows > 0 && std::isfinite(tps)) tps_sum += tps, ++tps_n;
    ++train_rows;
  }
  if (train_rows == 0) run_error(dir, "metrics.jsonl", "has no train rows");
  s.tokens_per_s = tps_n > 0 ? tps_sum / double(tps_n) : kNaN;
  s.wall_s = wall;
}

void read_routing(const fs::path& dir, RunSummary& s) {
  fs::path p = dir / "routing.h5";
  if (!fs::exists(p)) run_error(dir, "routing.h5", "missing (was the run dense, or killed before its first flush?)");
  h5::File f = h5::File::open(p, h5::File::Mode::read, /*file_locking=*/false);
  auto need = [&](const std::string& obj) {
    if (!f.exists(obj)) run_error(dir, "routing.h5", obj + " missing");
  };
  need("/steps");
  std::vector<int64_t> steps = f.read<int64_t>("/steps");
  if (steps.empty()) run_error(dir, "routing.h5", "/steps is empty (no step logged)");
  std::vector<int> layers = moe_layers(f);
  if (layers.empty()) run_error(dir, "routing.h5", "no /layer_<l> group");
  s.num_experts = f.has_attr("/", "num_experts") ? f.attr_int("/", "num_experts") : 0;
  s.num_layers = int64_t(layers.size());
  s.first_step = steps.front();
  s.last_step = steps.back();
  const size_t T = steps.size();

  double sum = 0, sup = -std::numeric_limits<double>::infinity(), first = 0, last = 0;
  int64_t n = 0, n_first = 0, n_last = 0;
  double dropped = 0, load = 0;
  int64_t dead = 0;
  double global = kNaN;
  // Routing time over step time, summed over the steps after the first (warm-up, as for
  // tokens_per_s) where both are logged; step_time_s is the same in every layer group.
  double routing_time = 0, step_time = 0;
  bool timed = false;
  for (int l : layers) {
    std::string g = "/layer_" + std::to_string(l);
    for (const char* d : {"/maxvio", "/load", "/dropped", "/dead_experts"}) need(g + d);
    std::vector<double> mv = f.read<double>(g + "/maxvio");
    if (mv.size() < T) run_error(dir, "routing.h5", g + "/maxvio has " + std::to_string(mv.size()) + " rows, /steps " + std::to_string(T));
    // Rows written before a series existed hold NaN (docs/formats.md): they are skipped.
    for (size_t t = 0; t < T; ++t)
      if (std::isfinite(mv[t])) sum += mv[t], ++n, sup = std::max(sup, mv[t]);
    if (std::isfinite(mv[0])) first += mv[0], ++n_first;
    if (std::isfinite(mv[T - 1])) last += mv[T - 1], ++n_last;
    for (double x : f.read<double>(g + "/load"))
      if (std::isfinite(x)) load += x;
    for (double x : f.read<double>(g + "/dropped"))
      if (std::isfinite(x)) dropped += x;
    std::vector<double> de = f.read<double>(g + "/dead_experts");
    if (de.size() >= T && std::isfinite(de[T - 1])) dead += int64_t(std::llround(de[T - 1]));
    if (f.exists(g + "/routing_time_s") && f.exists(g + "/step_time_s")) {
      std::vector<double> rt = f.read<double>(g + "/routing_time_s"), st = f.read<double>(g + "/step_time_s");
      for (size_t t = 1; t < std::min({T, rt.size(), st.size()}); ++t) {
        if (!std::isfinite(rt[t]) || !std::isfinite(st[t])) continue;
        routing_time += rt[t];
        if (l == layers.front()) step_time += st[t];
        timed = true;
      }
    }
    std::string ge = "/eval" + g + "/maxvio_global/values";
    if (f.exists(ge)) {
      std::vector<double> v = f.read<double>(ge);
      if (!v.empty() && std::isfinite(v.back())) global = std::isnan(global) ? v.back() : std::max(global, v.back());
    }
  }
  s.avg_maxvio = n ? sum / double(n) : kNaN;
  s.sup_maxvio = n ? sup : kNaN;
  s.maxvio_first = n_first ? first / double(n_first) : kNaN;
  s.maxvio_last = n_last ? last / double(n_last) : kNaN;
  s.maxvio_global = global;
  s.dead_experts = dead;
  s.dropped_share = load > 0 ? dropped / load : kNaN;
  s.routing_time_share = timed && step_time > 0 ? routing_time / step_time : kNaN;
}

std::string fmt(double v, const char* f = "%.4g") {
  if (!std::isfinite(v)) return "n/a";
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

struct Column {
  const char* name;
  std::string (*cell)(const RunSummary&, bool csv);
};

const std::vector<Column>& columns() {
  static const std::vector<Column> c = {
      {"run", [](const RunSummary& s, bool) { return s.run; }},
      {"strategy", [](const RunSummary& s, bool) { return s.strategy; }},
      {"experts", [](const RunSummary& s, bool) { return std::to_string(s.num_experts); }},
      {"steps", [](const RunSummary& s, bool) { return std::to_string(s.last_step); }},
      {"val_ppl", [](const RunSummary& s, bool csv) { return fmt(s.final_val_ppl, csv ? "%.10g" : "%.3f"); }},
      {"AvgMaxVio", [](const RunSummary& s, bool csv) { return fmt(s.avg_maxvio, csv ? "%.10g" : "%.4g"); }},
      {"SupMaxVio", [](const RunSummary& s, bool csv) { return fmt(s.sup_maxvio, csv ? "%.10g" : "%.4g"); }},
      {"MaxVio_first", [](const RunSummary& s, bool csv) { return fmt(s.maxvio_first, csv ? "%.10g" : "%.4g"); }},
      {"MaxVio_last", [](const RunSummary& s, bool csv) { return fmt(s.maxvio_last, csv ? "%.10g" : "%.4g"); }},
      {"MaxVio_global", [](const RunSummary& s, bool csv) { return fmt(s.maxvio_global, csv ? "%.10g" : "%.4g"); }},
      {"dead_experts", [](const RunSummary& s, bool) { return std::to_string(s.dead_experts); }},
      {"dropped_share", [](const RunSummary& s, bool csv) { return fmt(s.dropped_share, csv ? "%.10g" : "%.4g"); }},
      {"routing_time_share", [](const RunSummary& s, bool csv) { return fmt(s.routing_time_share, csv ? "%.10g" : "%.4g"); }},
      {"tokens_per_s", [](const RunSummary& s, bool csv) { return fmt(s.tokens_per_s, csv ? "%.10g" : "%.0f"); }},
      {"wall_s_est", [](const RunSummary& s, bool csv) { return fmt(s.wall_s, csv ? "%.10g" : "%.1f"); }},
  };
  return c;
}

std::string csv_cell(const std::string& v) {
  if (v.find_first_of(",\"\n") == std::string::npos) return v;
  std::string o = "\"";
  for (char c : v) o += c == '"' ? std::string("\"\"") : std::string(1, c);
  return o + "\"";
}

}  // namespace

JsonRow parse_json_row(const std::string& line, const std::string& where) {
  JsonRow r;
  JsonCursor c{line, 0, where};
  c.expect('{');
  c.ws();
  if (c.i < line.size() && line[c.i] == '}') return r;
  while (true) {
    std::string key = c.string();
    c.expect(':');
    c.ws();
    if (c.i < line.size() && line[c.i] == '"') r.strings[key] = c.string();
    else r.numbers[key] = c.number();
    c.ws();
    if (c.i < line.size() && line[c.i] == ',') {
      ++c.i;
      continue;
    }
    c.expect('}');
    break;
  }
  c.ws();
  if (c.i != line.size()) c.fail("trailing characters after the object");
  return r;
}

RunSummary summarize_run(const fs::path& dir) {
  if (!fs::is_directory(dir)) throw Error("run " + dir.string() + ": not a directory");
  RunSummary s;
  s.dir = dir.string();
  fs::path norm = dir.lexically_normal();
  s.run = (norm.filename().empty() ? norm.parent_path() : norm).filename().string();
  s.strategy = strategy_of(dir);
  read_metrics(dir, s);
  read_routing(dir, s);
  return s;
}

std::string compare_markdown(const std::vector<RunSummary>& runs) {
  std::ostringstream o;
  o << "|";
  for (const Column& c : columns()) o << " " << c.name << " |";
  o << "\n|";
  for (size_t i = 0; i < columns().size(); ++i) o << (i < 2 ? "---|" : "---:|");
  o << "\n";
  for (const RunSummary& s : runs) {
    o << "|";
    for (const Column& c : columns()) o << " " << c.cell(s, false) << " |";
    o << "\n";
  }
  return o.str();
}

std::string compare_csv(const std::vector<RunSummary>& runs) {
  std::ostringstream o;
  for (size_t i = 0; i < columns().size(); ++i) o << (i ? "," : "") << columns()[i].name;
  o << "\n";
  for (const RunSummary& s : runs) {
    for (size_t i = 0; i < columns().size(); ++i) o << (i ? "," : "") << csv_cell(columns()[i].cell(s, true));
    o << "\n";
  }
  return o.str();
}

}  // namespace moe
