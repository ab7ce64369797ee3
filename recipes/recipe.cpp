// Parsing, validation, --set overrides and rendering of recipes, driven by recipe_schema().
#include "recipes/recipe.h"

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "core/error.h"
#include "recipes/recipe_schema.h"

namespace moe {
namespace {

[[noreturn]] void fail(const std::string& where, const std::string& msg) { throw Error(where + ": " + msg); }

std::string location(const std::string& source, const toml::node& n) {
  auto line = n.source().begin.line;
  return line ? source + ":" + std::to_string(line) : source;
}

const RecipeKey* find_key(const std::string& section, const std::string& name) {
  for (const auto& k : recipe_schema())
    if (k.section == section && k.name == name) return &k;
  return nullptr;
}

std::string keys_of(const std::string& section) {
  std::string out;
  for (const auto& k : recipe_schema())
    if (k.section == section) out += (out.empty() ? "" : ", ") + k.name;
  return out;
}

std::string section_names() {
  std::string out;
  std::string last;
  for (const auto& k : recipe_schema())
    if (k.section != last) {
      out += (out.empty() ? "" : ", ") + k.section;
      last = k.section;
    }
  return out;
}

void apply(Recipe& r, const RecipeKey& key, const toml::node& value, const std::string& where) {
  std::string expected = key.set(r, value);
  if (!expected.empty()) fail(where, "key '" + key.full() + "' must be " + expected);
}

// Checks that involve more than one key.
void validate(const Recipe& r, const std::string& src) {
  const auto& m = r.model;
  if (m.d_model % m.n_heads != 0 || (m.d_model / m.n_heads) % 2 != 0)
    fail(src, "key 'model.d_model' (" + std::to_string(m.d_model) + ") must be a multiple of 2 * model.n_heads (" +
                  std::to_string(m.n_heads) + ") so each head has an even size for RoPE");
  if (m.use_moe) {
    if (m.moe.top_k > m.moe.num_experts && m.moe.balance.strategy != "expert_choice")
      fail(src, "key 'router.top_k' (" + std::to_string(m.moe.top_k) + ") must be <= moe.num_experts (" +
                    std::to_string(m.moe.num_experts) + ")");
  }
  if (r.train.batch_size % r.train.grad_accum != 0)
    fail(src, "key 'train.batch_size' (" + std::to_string(r.train.batch_size) + ") must be a multiple of train.grad_accum (" +
                  std::to_string(r.train.grad_accum) + ")");
  if (r.optim.min_lr > r.optim.lr) fail(src, "key 'optim.min_lr' must be <= optim.lr");
  if (r.schedule.kind != "constant" && r.schedule.warmup_steps >= r.train.steps)
    fail(src, "key 'schedule.warmup_steps' (" + std::to_string(r.schedule.warmup_steps) + ") must be < train.steps (" +
                  std::to_string(r.train.steps) + ")");
  if (r.model.moe.num_experts % r.parallel.ep != 0)
    fail(src, "key 'parallel.ep' (" + std::to_string(r.parallel.ep) + ") must divide moe.num_experts (" +
                  std::to_string(r.model.moe.num_experts) + ")");
}

void apply_override(Recipe& r, const std::string& ov) {
  std::string where = "--set " + ov;
  auto eq = ov.find('=');
  if (eq == std::string::npos) fail(where, "expected section.key=value");
  std::string full = ov.substr(0, eq), value = ov.substr(eq + 1);
  auto dot = full.find('.');
  if (dot == std::string::npos) fail(where, "expected section.key=value (e.g. train.steps=100)");
  const RecipeKey* key = find_key(full.substr(0, dot), full.substr(dot + 1));
  if (!key) fail(where, "unknown key '" + full + "'");
  toml::table t;
  try {
    t = toml::parse("v = " + value);
  } catch (const toml::parse_error&) {
    // A bare word (e.g. train.device=cpu) is taken as a string.
    t = toml::table{{"v", value}};
  }
  apply(r, *key, *t.get("v"), where);
}

}  // namespace

namespace {

std::string read_file(const std::string& path, const std::string& what) {
  std::ifstream in(path);
  if (!in) fail(path, "cannot read the " + what + " (does it exist? recipes live in recipes/*.toml)");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Applies the keys of one recipe text onto r. A top-level `extends = "base.toml"` (a path relative
// to this file) applies the base first, so a family of recipes shares one base; depth is bounded
// to catch cycles.
void apply_text(Recipe& r, const std::string& text, const std::string& source, int depth) {
  if (depth > 8) fail(source, "'extends' nests more than 8 levels (a cycle?)");
  toml::table root;
  try {
    root = toml::parse(text, source);
  } catch (const toml::parse_error& e) {
    fail(source + ":" + std::to_string(e.source().begin.line), "invalid TOML: " + std::string(e.description()));
  }
  if (const toml::node* base = root.get("extends")) {
    if (!base->is_string()) fail(location(source, *base), "'extends' must be a string (a recipe path relative to this file)");
    std::string base_path = base->as_string()->get();
    std::filesystem::path p = std::filesystem::path(source).parent_path() / base_path;
    apply_text(r, read_file(p.string(), "base recipe named by 'extends' in " + source), p.string(), depth + 1);
  }
  for (auto&& [sec_key, sec_node] : root) {
    std::string sec(sec_key.str());
    if (sec == "extends") continue;
    const toml::table* tbl = sec_node.as_table();
    if (!tbl) fail(location(source, sec_node), "'" + sec + "' must be a [section] (sections: " + section_names() + ")");
    if (keys_of(sec).empty()) fail(location(source, sec_node), "unknown section [" + sec + "] (sections: " + section_names() + ")");
    for (auto&& [k, v] : *tbl) {
      std::string name(k.str());
      const RecipeKey* key = find_key(sec, name);
      if (!key) fail(location(source, v), "unknown key '" + sec + "." + name + "' (keys of [" + sec + "]: " + keys_of(sec) + ")");
      apply(r, *key, v, location(source, v));
    }
  }
}

}  // namespace

Recipe parse_recipe(const std::string& text, const std::string& source, const std::vector<std::string>& overrides) {
  Recipe r;
  r.path = source;
  apply_text(r, text, source, 0);
  for (const auto& ov : overrides) apply_override(r, ov);
  validate(r, source);
  r.model.max_seq_len = r.train.seq_len;
  return r;
}

Recipe load_recipe(const std::string& path, const std::vector<std::string>& overrides) {
  return parse_recipe(read_file(path, "recipe file"), path, overrides);
}

std::string resolved_toml(const Recipe& r) {
  std::ostringstream os;
  os << "# Resolved recipe: every key with its value (defaults and --set overrides applied).\n";
  if (!r.path.empty()) os << "# Source: " << r.path << "\n";
  std::string last;
  for (const auto& k : recipe_schema()) {
    if (k.section != last) {
      os << "\n[" << k.section << "]\n";
      last = k.section;
    }
    std::string v = k.get(r);
    if (v.empty()) os << "# " << k.name << " = (unset)\n";
    else os << k.name << " = " << v << "\n";
  }
  return os.str();
}

std::vector<RecipeKeyDoc> recipe_keys() {
  std::vector<RecipeKeyDoc> out;
  Recipe defaults;
  for (const auto& k : recipe_schema()) {
    std::string d = k.get(defaults);
    out.push_back({k.full(), k.type, d.empty() ? "unset" : d, k.doc});
  }
  return out;
}

}  // namespace moe
