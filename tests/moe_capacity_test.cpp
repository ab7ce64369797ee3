// Capacity: the formula, exactly which assignments each drop policy keeps on a hand-built
// case, the dropped count, and dropless passthrough.
#include <gtest/gtest.h>

#include "layers/moe/capacity.h"

using namespace moe;

namespace {
Routing make_routing(std::vector<int64_t> tok, std::vector<int64_t> ex, std::vector<double> score) {
  int64_t A = int64_t(tok.size());
  Routing r;
  r.token = Tensor::from_vector<int64_t>(tok, {A});
  r.expert = Tensor::from_vector<int64_t>(ex, {A});
  r.gate = Tensor::from_vector<double>(score, {A});
  r.score = Tensor::from_vector<double>(score, {A});
  return r;
}
}  // namespace

TEST(MoeCapacity, Formula) {
  EXPECT_EQ(expert_capacity(6, 2, 4, 1.0), 3);    // 2*6/4 = 3 exactly: no spurious ceil to 4
  EXPECT_EQ(expert_capacity(7, 2, 4, 1.0), 4);    // 3.5 -> 4
  EXPECT_EQ(expert_capacity(10, 1, 3, 1.25), 5);  // 4.1667 -> 5
  EXPECT_EQ(expert_capacity(10, 1, 3, 0.3), 1);   // 1.0 (floating 0.99999..) -> 1
  EXPECT_EQ(expert_capacity(10, 1, 3, std::nullopt), -1);
}

TEST(MoeCapacity, DropsByScoreAndByPositionExactly) {
  // 5 tokens, k = 2, E = 3, factor 0.6: C = ceil(2*5/3*0.6) = ceil(2.0) = 2.
  // Expert 0 gets assignments a0 (t0), a2 (t1), a4 (t2), a7 (t3): 4 > 2.
  // Expert 1 gets a1 (t0), a5 (t2), a9 (t4): 3 > 2. Expert 2 gets a3 (t1), a6 (t3), a8 (t4): 3 > 2.
  //                     a0   a1   a2   a3   a4   a5   a6   a7   a8   a9
  std::vector<int64_t> tok{0, 0, 1, 1, 2, 2, 3, 3, 4, 4};
  std::vector<int64_t> ex{0, 1, 0, 2, 0, 1, 2, 0, 2, 1};
  std::vector<double> sc{0.1, 0.9, 0.5, 0.2, 0.7, 0.3, 0.2, 0.6, 0.8, 0.4};
  Routing r = make_routing(tok, ex, sc);
  CapacityResult p = apply_capacity(r, 5, 2, 3, 0.6, DropPolicy::probs);
  EXPECT_EQ(p.capacity, 2);
  // Expert 0 keeps the two best of {.1,.5,.7,.6}: a4, a7. Expert 1 of {.9,.3,.4}: a1, a9.
  // Expert 2 of {.2,.2,.8}: a8 and, on the tie at 0.2, the earlier a3.
  EXPECT_EQ(p.kept, (std::vector<int64_t>{1, 3, 4, 7, 8, 9}));
  EXPECT_EQ(p.dropped, 4);
  CapacityResult q = apply_capacity(r, 5, 2, 3, 0.6, DropPolicy::position);
  // Earliest tokens: expert 0 keeps a0 (t0), a2 (t1); expert 1 a1 (t0), a5 (t2); expert 2 a3, a6.
  EXPECT_EQ(q.kept, (std::vector<int64_t>{0, 1, 2, 3, 5, 6}));
  EXPECT_EQ(q.dropped, 4);
  // Position follows the token, not the list order: an expert-major list gives the same tokens.
  Routing r2 = make_routing({3, 1, 0}, {0, 0, 0}, {1, 1, 1});
  CapacityResult q2 = apply_capacity(r2, 4, 1, 1, 0.5, DropPolicy::position);  // C = 2
  EXPECT_EQ(q2.kept, (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(q2.dropped, 1);
}

TEST(MoeCapacity, DroplessAndUnderCapacityKeepEverything) {
  Routing r = make_routing({0, 1, 2}, {0, 0, 1}, {0.3, 0.2, 0.9});
  CapacityResult a = apply_capacity(r, 3, 1, 2, std::nullopt, DropPolicy::probs);
  EXPECT_EQ(a.kept, (std::vector<int64_t>{0, 1, 2}));
  EXPECT_EQ(a.dropped, 0);
  EXPECT_EQ(a.capacity, -1);
  CapacityResult b = apply_capacity(r, 3, 1, 2, 2.0, DropPolicy::probs);  // C = 3
  EXPECT_EQ(b.kept.size(), 3u);
  EXPECT_EQ(b.dropped, 0);
}

TEST(MoeCapacity, BadSettingsNameTheKey) {
  for (double f : {0.0, -1.0}) {
    try {
      validate_capacity_factor(f);
      FAIL() << "expected an error for " << f;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("moe.capacity_factor"), std::string::npos) << e.what();
    }
  }
  try {
    parse_drop_policy("random");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("moe.drop_policy"), std::string::npos) << e.what();
  }
}
