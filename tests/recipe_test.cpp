// Recipe parsing: values, defaults, errors naming file:line and key, --set overrides, and the
// resolved rendering reading back to the same recipe; recipes/README.md documents every key.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "recipes/recipe.h"

using namespace moe;

namespace {
std::string error_of(const std::string& text, const std::vector<std::string>& ov = {}) {
  try {
    parse_recipe(text, "r.toml", ov);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST(Recipe, ParsesValuesAndKeepsDefaults) {
  Recipe r = parse_recipe(R"(
[model]
d_model = 64
n_heads = 4
[moe]
enabled = true
num_experts = 16
capacity_factor = 1.25
[router]
top_k = 2
balance = "bip"
[train]
steps = 50
batch_size = 8
)", "r.toml");
  EXPECT_EQ(r.model.d_model, 64);
  EXPECT_TRUE(r.model.use_moe);
  EXPECT_EQ(r.model.moe.num_experts, 16);
  ASSERT_TRUE(r.model.moe.capacity_factor.has_value());
  EXPECT_DOUBLE_EQ(*r.model.moe.capacity_factor, 1.25);
  EXPECT_EQ(r.model.moe.balance.strategy, "bip");
  EXPECT_EQ(r.train.steps, 50);
  EXPECT_EQ(r.train.seq_len, TrainSection{}.seq_len);
  EXPECT_EQ(r.model.max_seq_len, r.train.seq_len);
}

TEST(Recipe, ErrorsNameFileLineAndKey) {
  std::string e = error_of("[train]\nsteps = 10\nstep = 5\n");
  EXPECT_NE(e.find("r.toml:3"), std::string::npos) << e;
  EXPECT_NE(e.find("unknown key 'train.step'"), std::string::npos) << e;
  e = error_of("[train]\n\nsteps = \"ten\"\n");
  EXPECT_NE(e.find("r.toml:3"), std::string::npos) << e;
  EXPECT_NE(e.find("'train.steps' must be an integer"), std::string::npos) << e;
  e = error_of("[train]\nsteps = 0\n");
  EXPECT_NE(e.find("'train.steps' must be an integer >= 1"), std::string::npos) << e;
  e = error_of("[router]\nbalance = \"magic\"\n");
  EXPECT_NE(e.find("'router.balance' must be one of"), std::string::npos) << e;
  EXPECT_NE(e.find("\"bip\""), std::string::npos) << e;
  e = error_of("[trian]\nsteps = 3\n");
  EXPECT_NE(e.find("unknown section [trian]"), std::string::npos) << e;
  e = error_of("[moe]\nenabled = true\nnum_experts = 4\n[router]\ntop_k = 5\n");
  EXPECT_NE(e.find("router.top_k"), std::string::npos) << e;
  e = error_of("[moe]\ncapacity_factor = 0.0\n");
  EXPECT_NE(e.find("'moe.capacity_factor' must be a number > 0"), std::string::npos) << e;
  e = error_of("[train\nsteps = 3\n");
  EXPECT_NE(e.find("invalid TOML"), std::string::npos) << e;
}

TEST(Recipe, OverridesUseTheSameValidation) {
  Recipe r = parse_recipe("[train]\nsteps = 10\n", "r.toml", {"train.steps=25", "train.device=cpu", "optim.lr=1e-3"});
  EXPECT_EQ(r.train.steps, 25);
  EXPECT_DOUBLE_EQ(r.optim.lr, 1e-3);
  EXPECT_NE(error_of("", {"train.steps=abc"}).find("--set train.steps=abc: key 'train.steps' must be an integer"),
            std::string::npos);
  EXPECT_NE(error_of("", {"train.nope=1"}).find("unknown key 'train.nope'"), std::string::npos);
  EXPECT_NE(error_of("", {"steps=1"}).find("expected section.key=value"), std::string::npos);
  EXPECT_NE(error_of("", {"train.device=tpu"}).find("'train.device' must be one of"), std::string::npos);
}

TEST(Recipe, ResolvedRecipeReadsBackIdentically) {
  Recipe r = parse_recipe("[optim]\nlr = 0.00123\n[moe]\ncapacity_factor = 1.5\n[train]\nname = \"a \\\"q\\\" b\"\n",
                          "r.toml");
  std::string text = resolved_toml(r);
  Recipe back = parse_recipe(text, "r.toml");
  EXPECT_EQ(resolved_toml(back), text);
  EXPECT_DOUBLE_EQ(back.optim.lr, 0.00123);
  EXPECT_EQ(back.train.name, "a \"q\" b");
  // Unset optional keys stay unset.
  Recipe d = parse_recipe(resolved_toml(Recipe{}), "d.toml");
  EXPECT_FALSE(d.model.moe.capacity_factor.has_value());
}

TEST(Recipe, ReadmeDocumentsEveryKey) {
  std::ifstream in(std::string(MOE_SOURCE_DIR) + "/recipes/README.md");
  ASSERT_TRUE(in) << "recipes/README.md is missing";
  std::stringstream ss;
  ss << in.rdbuf();
  for (const auto& k : recipe_keys())
    EXPECT_NE(ss.str().find("`" + k.key + "`"), std::string::npos) << k.key << " is not documented in recipes/README.md";
}

TEST(Recipe, ShippedRecipesParse) {
  namespace fs = std::filesystem;
  int n = 0;
  for (const char* sub : {"recipes", "recipes/balance"})
    for (const auto& entry : fs::directory_iterator(fs::path(MOE_SOURCE_DIR) / sub)) {
      if (entry.path().extension() != ".toml") continue;
      EXPECT_NO_THROW(load_recipe(entry.path().string())) << entry.path();
      ++n;
    }
  EXPECT_GE(n, 15);
  Recipe bip = load_recipe(std::string(MOE_SOURCE_DIR) + "/recipes/balance/bip_e64.toml");
  EXPECT_EQ(bip.model.moe.num_experts, 64);
  EXPECT_EQ(bip.model.moe.balance.strategy, "bip");
  EXPECT_EQ(bip.train.name, "balance/bip_e64");
}

TEST(Recipe, ExtendsAppliesTheBaseFirst) {
  namespace fs = std::filesystem;
  fs::path dir = fs::path(MOE_BINARY_DIR) / "test_data" / "recipe_extends";
  fs::create_directories(dir);
  std::ofstream(dir / "base.toml") << "[train]\nsteps = 40\nseed = 9\n[moe]\nenabled = true\n";
  std::ofstream(dir / "child.toml") << "extends = \"base.toml\"\n[train]\nsteps = 50\n";
  std::ofstream(dir / "loop.toml") << "extends = \"loop.toml\"\n";
  Recipe r = load_recipe((dir / "child.toml").string(), {"train.seed=3"});
  EXPECT_EQ(r.train.steps, 50);   // the child wins over the base
  EXPECT_TRUE(r.model.use_moe);   // the base applies
  EXPECT_EQ(r.train.seed, 3);     // --set wins over both
  EXPECT_THROW(load_recipe((dir / "loop.toml").string()), Error);
  std::ofstream(dir / "bad_child.toml") << "extends = \"missing.toml\"\n";
  try {
    load_recipe((dir / "bad_child.toml").string());
    FAIL() << "missing base did not throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("missing.toml"), std::string::npos) << e.what();
  }
}
