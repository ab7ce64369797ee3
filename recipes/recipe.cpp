// Parsing, validation, --set overrides and rendering of recipes, driven by recipe_schema().
#include "recipes/recipe.h"

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

Recipe parse_recipe(const std::string& text, const std::string& source, const std::vector<std::string>& overrides) {
  Recipe r;
  r.path = source;
  toml::table root;
  try {
    root = toml::parse(text, source);
  } catch (const toml::parse_error& e) {
    fail(source + ":" + std::to_string(e.source().begin.line), "invalid TOML: " + std::string(e.description()));
  }
  for (auto&& [sec_key, sec_node] : root) {
    std::string sec(sec_key.str());
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
  for (const auto& ov : overrides) apply_override(r, ov);
  validate(r, source);
  r.model.max_seq_len = r.train.seq_len;
  return r;
}

Recipe load_recipe(const std::string& path, const std::vector<std::string>& overrides) {
  std::ifstream in(path);
  if (!in) fail(path, "cannot read the recipe file (does it exist? recipes live in recipes/*.toml)");
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_recipe(ss.str(), path, overrides);
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
