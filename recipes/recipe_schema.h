// The recipe schema: one entry per key with its type, documentation, setter (with range check)
// and getter. recipe.cpp walks it to parse, validate, override and render recipes.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include <toml++/toml.h>

#include "recipes/recipe.h"

namespace moe {

struct RecipeKey {
  std::string section, name, type, doc;
  // Sets the value from a TOML node; returns "" or what was expected ("an integer >= 1").
  std::function<std::string(Recipe&, const toml::node&)> set;
  // The value as TOML text; "" means unset (optional keys), rendered as a comment.
  std::function<std::string(const Recipe&)> get;
  std::string full() const { return section + "." + name; }
};

const std::vector<RecipeKey>& recipe_schema();
const std::vector<std::string>& balance_strategy_names();

}  // namespace moe
