// `moetrain compare` and tools/plot_routing.py on small real runs (two strategies, a few steps of a
// tiny model on a prepared text corpus): every number is recomputed from routing.h5 / metrics.jsonl.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "checkpoints/hdf5_util.h"
#include "core/error.h"
#include "core/rng.h"
#include "data/text_corpus.h"
#include "recipes/compare.h"
#include "recipes/recipe.h"
#include "recipes/trainer.h"
#include "tests/tiny_corpus.h"
#include "tests/train_run_util.h"

namespace fs = std::filesystem;
using namespace moe;

namespace {

constexpr const char* kPython = "/usr/bin/python3";

const std::string& corpus_dir() {
  static const std::string dir = test::prepare_tiny_corpus("compare_corpus", 11);
  return dir;
}

// 4 experts, 2 MoE layers, 10 steps; evals at steps 5 and 10, metrics every 3 steps (+1, +last).
std::string tiny_recipe(const std::string& balance) {
  return "[model]\nvocab_size = 256\nd_model = 32\nn_layers = 2\nn_heads = 2\n"
         "[moe]\nenabled = true\nnum_experts = 4\nexpert_hidden = 32\ncapacity_factor = 1.0\n"
         "[router]\ntop_k = 2\nbalance = \"" + balance + "\"\nz_loss = 1e-3\n"
         "[data]\ndir = \"" + corpus_dir() + "\"\n"
         "[schedule]\nwarmup_steps = 2\n"
         "[train]\nsteps = 10\nbatch_size = 4\nseq_len = 16\nseed = 3\n"
         "[eval]\nevery = 5\nbatches = 2\n[log]\nevery = 3\nflush_every = 4\n[checkpoint]\nevery = 0\nkeep = 1\n";
}

// Trains each strategy once per test (each TEST runs in its own process under ctest, possibly in
// parallel: `tag` keeps their directories apart).
std::vector<fs::path> trained_runs(const std::string& tag) {
  std::vector<fs::path> dirs;
  for (const char* s : {"aux_loss", "loss_free"}) {
    fs::path d = test::fresh_run_dir("compare_" + tag + "/" + s);
    std::string console;
    EXPECT_EQ(test::train_quietly(parse_recipe(tiny_recipe(s), "tiny.toml"), d, "", 0, &console), kTrainOk) << console;
    dirs.push_back(d);
  }
  return dirs;
}

std::vector<int> layer_ids(const h5::File& f) {
  std::vector<int> ls;
  for (auto& c : f.children("/"))
    if (c.name.rfind("layer_", 0) == 0) ls.push_back(std::stoi(c.name.substr(6)));
  return ls;
}

double last_number_after(const std::string& line, const std::string& key) {
  auto p = line.find("\"" + key + "\": ");
  if (p == std::string::npos) return NAN;
  return std::strtod(line.c_str() + p + key.size() + 4, nullptr);
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

TEST(Compare, NumbersComeFromRoutingH5AndMetrics) {
  for (const fs::path& dir : trained_runs("numbers")) {
    RunSummary s = summarize_run(dir);
    h5::File f = h5::File::open(dir / "routing.h5", h5::File::Mode::read, false);
    std::vector<int64_t> steps = f.read<int64_t>("/steps");
    ASSERT_EQ(steps.size(), 10u);
    EXPECT_EQ(steps.front(), 1);
    EXPECT_EQ(s.last_step, 10);
    std::vector<int> layers = layer_ids(f);
    ASSERT_EQ(layers.size(), 2u);
    EXPECT_EQ(s.num_layers, 2);
    EXPECT_EQ(s.num_experts, 4);

    // Recomputed here as the mean of per-layer means (equal to the pooled mean: every layer has
    // one row per step) and the max of per-layer maxima.
    double mean_of_means = 0, sup = 0, first = 0, last = 0, load = 0, dropped = 0, global = 0;
    double dead = 0, routing_time = 0, step_time = 0;
    for (int l : layers) {
      std::string g = "/layer_" + std::to_string(l);
      std::vector<double> mv = f.read<double>(g + "/maxvio");
      // Routing time: every step logged, each below its step's wall time; the share skips step 1.
      std::vector<double> rt = f.read<double>(g + "/routing_time_s"), st = f.read<double>(g + "/step_time_s");
      ASSERT_EQ(rt.size(), steps.size());
      ASSERT_EQ(st.size(), steps.size());
      for (size_t t = 0; t < rt.size(); ++t) {
        EXPECT_GT(rt[t], 0.0) << g << " step " << steps[t];
        EXPECT_LT(rt[t], st[t]) << g << " step " << steps[t];
        if (t == 0) continue;
        routing_time += rt[t];
        if (l == layers.front()) step_time += st[t];
      }
      ASSERT_EQ(mv.size(), steps.size());
      double m = 0;
      for (double x : mv) m += x;
      mean_of_means += m / double(mv.size()) / double(layers.size());
      sup = std::max(sup, *std::max_element(mv.begin(), mv.end()));
      first += mv.front() / double(layers.size());
      last += mv.back() / double(layers.size());
      for (double x : f.read<double>(g + "/load")) load += x;
      for (double x : f.read<double>(g + "/dropped")) dropped += x;
      dead += f.read<double>(g + "/dead_experts").back();
      global = std::max(global, f.read<double>("/eval" + g + "/maxvio_global/values").back());

      // The routing log and metrics.jsonl must agree at the logged steps (both 17 digits).
      std::ifstream in(dir / "metrics.jsonl");
      std::string line;
      int checked = 0;
      while (std::getline(in, line)) {
        if (line.find("\"kind\": \"train\"") == std::string::npos) continue;
        int64_t step = int64_t(last_number_after(line, "step"));
        auto it = std::find(steps.begin(), steps.end(), step);
        ASSERT_NE(it, steps.end()) << line;
        EXPECT_DOUBLE_EQ(last_number_after(line, "layer_" + std::to_string(l) + ".maxvio"), mv[size_t(it - steps.begin())]);
        ++checked;
      }
      EXPECT_EQ(checked, 5);  // steps 1, 3, 6, 9, 10
    }
    EXPECT_NEAR(s.avg_maxvio, mean_of_means, 1e-12 * std::max(1.0, mean_of_means));
    EXPECT_DOUBLE_EQ(s.sup_maxvio, sup);
    EXPECT_NEAR(s.maxvio_first, first, 1e-12);
    EXPECT_NEAR(s.maxvio_last, last, 1e-12);
    EXPECT_DOUBLE_EQ(s.maxvio_global, global);
    EXPECT_EQ(double(s.dead_experts), dead);
    ASSERT_GT(load, 0);
    EXPECT_DOUBLE_EQ(s.dropped_share, dropped / load);
    // Capacity factor 1 (C = kT/E exactly) drops whatever lands above the mean load, which a
    // router balancing from a random start does at some step; a share is below 1 by definition.
    EXPECT_GT(s.dropped_share, 0.0);
    EXPECT_LT(s.dropped_share, 1.0);
    // MaxVio lies in [0, E/k - 1] (a token picks k distinct experts: one expert holds at most
    // T of the kT assignments); the mean cannot exceed the max.
    EXPECT_GE(s.avg_maxvio, 0.0);
    EXPECT_LE(s.avg_maxvio, s.sup_maxvio);
    EXPECT_LE(s.sup_maxvio, 4.0 / 2.0 - 1.0 + 1e-12);

    // Perplexity: the last eval row; tokens/s: mean of the train rows after the first; wall
    // time: sum of new tokens / rate over the train rows.
    std::ifstream in(dir / "metrics.jsonl");
    std::string line;
    double ppl = NAN, tps_sum = 0, wall = 0, prev_tokens = 0;
    int train_rows = 0;
    while (std::getline(in, line)) {
      if (line.find("\"kind\": \"eval\"") != std::string::npos) ppl = last_number_after(line, "val_ppl");
      if (line.find("\"kind\": \"train\"") == std::string::npos) continue;
      double tps = last_number_after(line, "tokens_per_s"), tok = last_number_after(line, "tokens_seen");
      if (train_rows++ > 0) tps_sum += tps;
      wall += (tok - prev_tokens) / tps;
      prev_tokens = tok;
    }
    ASSERT_EQ(train_rows, 5);
    EXPECT_DOUBLE_EQ(s.final_val_ppl, ppl);
    EXPECT_GT(ppl, 1.0);
    EXPECT_LT(ppl, 256.0 * 4);  // a few steps from a byte-uniform start: near 256, never wildly above
    EXPECT_NEAR(s.tokens_per_s, tps_sum / 4, 1e-9 * tps_sum);
    EXPECT_NEAR(s.wall_s, wall, 1e-9 * wall);
    EXPECT_GT(s.wall_s, 0.0);
    ASSERT_GT(step_time, 0.0);
    EXPECT_NEAR(s.routing_time_share, routing_time / step_time, 1e-12);
    EXPECT_GT(s.routing_time_share, 0.0);
    EXPECT_LT(s.routing_time_share, 1.0);
  }
}

TEST(Compare, StrategyComesFromTheRunsRecipe) {
  auto dirs = trained_runs("strategy");
  EXPECT_EQ(summarize_run(dirs[0]).strategy, "aux_loss");
  EXPECT_EQ(summarize_run(dirs[1]).strategy, "loss_free");
  EXPECT_EQ(summarize_run(dirs[1]).run, "loss_free");
}

TEST(Compare, CliCsvAgreesWithAnIndependentH5pyRecomputation) {
  auto dirs = trained_runs("cli");
  fs::path csv = dirs[0].parent_path() / "compare.csv";
  fs::path md = dirs[0].parent_path() / "compare.md";
  std::string cmd = std::string(MOE_BINARY_DIR) + "/moetrain compare " + dirs[0].string() + " " + dirs[1].string() +
                    " --markdown --csv " + csv.string() + " > " + md.string();
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  std::string table = slurp(md);
  EXPECT_NE(table.find("| run | strategy |"), std::string::npos) << table;
  EXPECT_NE(table.find("| loss_free | loss_free |"), std::string::npos) << table;
  std::string text = slurp(csv);
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 3) << text;
  // The CSV holds 10 significant digits of the same numbers summarize_run computes.
  RunSummary s = summarize_run(dirs[0]);
  std::istringstream rows(text);
  std::string header, row;
  std::getline(rows, header);
  std::getline(rows, row);
  std::vector<std::string> h, v;
  {
    std::istringstream a(header), b(row);
    for (std::string c; std::getline(a, c, ',');) h.push_back(c);
    for (std::string c; std::getline(b, c, ',');) v.push_back(c);
  }
  ASSERT_EQ(h.size(), v.size());
  auto col = [&](const std::string& name) {
    auto it = std::find(h.begin(), h.end(), name);
    EXPECT_NE(it, h.end()) << name;
    return v[size_t(it - h.begin())];
  };
  EXPECT_NEAR(std::stod(col("AvgMaxVio")), s.avg_maxvio, 1e-9 * std::max(1.0, s.avg_maxvio));
  EXPECT_NEAR(std::stod(col("SupMaxVio")), s.sup_maxvio, 1e-9 * std::max(1.0, s.sup_maxvio));
  EXPECT_NEAR(std::stod(col("routing_time_share")), s.routing_time_share, 1e-9);

  std::string check = std::string(kPython) + " " + MOE_SOURCE_DIR + "/tools/check_compare.py " + csv.string() + " " +
                      dirs[0].string() + " " + dirs[1].string();
  EXPECT_EQ(std::system(check.c_str()), 0) << check;
}

TEST(Compare, MissingFilesGiveOneLineNamingRunAndFile) {
  fs::path d = fs::path(MOE_BINARY_DIR) / "test_runs" / "compare_missing";
  fs::remove_all(d);
  fs::create_directories(d);
  auto error_of = [&]() -> std::string {
    try {
      summarize_run(d);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  std::string e = error_of();
  EXPECT_NE(e.find(d.string()), std::string::npos) << e;
  EXPECT_NE(e.find("recipe.toml"), std::string::npos) << e;
  std::ofstream(d / "recipe.toml") << "[router]\nbalance = \"bip\"\n";
  e = error_of();
  EXPECT_NE(e.find("metrics.jsonl"), std::string::npos) << e;
  std::ofstream(d / "metrics.jsonl") << "{\"kind\": \"train\", \"step\": 1, \"tokens_per_s\": 100, \"tokens_seen\": 64}\n";
  e = error_of();
  EXPECT_NE(e.find("routing.h5"), std::string::npos) << e;
  EXPECT_EQ(e.find('\n'), std::string::npos) << e;
  std::ofstream(d / "metrics.jsonl") << "{\"kind\": \"train\", \"step\": 1, oops}\n";
  e = error_of();
  EXPECT_NE(e.find("metrics.jsonl:1"), std::string::npos) << e;
}

TEST(Compare, JsonRowParsesNumbersNonFiniteAndStrings) {
  JsonRow r = parse_json_row("{\"kind\": \"eval\", \"step\": 12, \"x\": -1.5e-3, \"n\": NaN, \"i\": -Infinity, "
                             "\"s\": \"a\\\"b\"}",
                             "t");
  EXPECT_EQ(r.strings["kind"], "eval");
  EXPECT_EQ(r.strings["s"], "a\"b");
  EXPECT_EQ(r.numbers["step"], 12);
  EXPECT_DOUBLE_EQ(r.numbers["x"], -1.5e-3);
  EXPECT_TRUE(std::isnan(r.numbers["n"]));
  EXPECT_TRUE(std::isinf(r.numbers["i"]) && r.numbers["i"] < 0);
  EXPECT_THROW(parse_json_row("{\"a\": 1", "t"), Error);
  EXPECT_THROW(parse_json_row("{\"a\": 1} x", "t"), Error);
}

TEST(PlotRouting, WritesEveryFigureForTwoStrategies) {
  auto dirs = trained_runs("plot");
  fs::path out = dirs[0].parent_path() / "figures";
  fs::remove_all(out);
  std::string cmd = std::string(kPython) + " " + MOE_SOURCE_DIR + "/tools/plot_routing.py --out " + out.string() + " " +
                    dirs[0].string() + " " + dirs[1].string() + " > " + (out.parent_path() / "plot.log").string() + " 2>&1";
  int rc = std::system(cmd.c_str());
  ASSERT_EQ(rc, 0) << cmd << "\n" << slurp(out.parent_path() / "plot.log");
  std::vector<std::string> expected = {"maxvio_layer0.png", "maxvio_layer1.png", "load_aux_loss.png",
                                       "load_loss_free.png", "temperature.png", "genre_aux_loss.png",
                                       "genre_loss_free.png", "genre_jsd.png"};
  for (const auto& name : expected) {
    fs::path p = out / name;
    ASSERT_TRUE(fs::exists(p)) << p << "\n" << slurp(out.parent_path() / "plot.log");
    EXPECT_GT(fs::file_size(p), 5u * 1024) << p;
    std::ifstream png(p, std::ios::binary);
    char sig[8] = {};
    png.read(sig, 8);
    EXPECT_EQ(std::string(sig + 1, 3), "PNG") << p;
  }
  // A run without routing.h5: a clear error and a nonzero exit.
  fs::path bare = dirs[0].parent_path() / "bare";
  fs::create_directories(bare);
  std::string bad = std::string(kPython) + " " + MOE_SOURCE_DIR + "/tools/plot_routing.py --out " + out.string() + " " +
                    bare.string() + " > " + (out.parent_path() / "bad.log").string() + " 2>&1";
  EXPECT_NE(std::system(bad.c_str()), 0);
  std::string log = slurp(out.parent_path() / "bad.log");
  EXPECT_NE(log.find("routing.h5 missing"), std::string::npos) << log;
}
