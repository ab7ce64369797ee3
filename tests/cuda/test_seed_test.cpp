// The kernel tests' seeds (tests/cuda/test_seed.h): run 0 keeps the fixed inputs, other runs
// draw other inputs, a test's inputs stay apart, and a bad MOE_TEST_SEED stops the binary.
#include "tests/cuda/test_seed.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <set>

namespace moe::test {
namespace {

TEST(TestSeed, RunZeroKeepsTheFixedInputs) {
  for (uint64_t base : {0ull, 7ull, 31ull, 1234ull}) EXPECT_EQ(mix_seed(base, 0), base);
}

TEST(TestSeed, OtherRunsDrawOtherInputsAndKeepBasesApart) {
  std::set<uint64_t> seen;
  for (uint64_t run : {1ull, 2ull, 606ull, 0xffffffffffffffffull})
    for (uint64_t base = 0; base < 64; ++base) {
      EXPECT_NE(mix_seed(base, run), base) << "run " << run << " base " << base;
      seen.insert(mix_seed(base, run));
    }
  EXPECT_EQ(seen.size(), 4u * 64u) << "two (run, base) pairs gave the same seed";
  EXPECT_EQ(mix_seed(31, 606), mix_seed(31, 606));  // a run seed reproduces its inputs
}

TEST(TestSeed, FirstUsableSeedDrawsAgainUntilAccepted) {
  int calls = 0;
  const auto [seed, found] = first_usable_seed(31, [&](uint64_t s) { return ++calls, s >= 2031; });
  EXPECT_TRUE(found);
  EXPECT_EQ(seed, 2031u);
  EXPECT_EQ(calls, 3);
  EXPECT_FALSE(first_usable_seed(31, [](uint64_t) { return false; }, 5).second);
}

TEST(TestSeedDeathTest, ABadValueStopsTheBinaryWithOneLine) {
  EXPECT_EXIT(
      {
        setenv("MOE_TEST_SEED", "12x", 1);
        read_or_draw_run_seed();
      },
      ::testing::ExitedWithCode(2), "MOE_TEST_SEED: expected an unsigned decimal integer");
  EXPECT_EXIT(
      {
        setenv("MOE_TEST_SEED", "-3", 1);
        read_or_draw_run_seed();
      },
      ::testing::ExitedWithCode(2), "got '-3'");
}

}  // namespace
}  // namespace moe::test
