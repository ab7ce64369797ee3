// The kernel tests' fresh random inputs (run_seed.h: test_seed, first_usable_seed, MOE_TEST_SEED)
// and the line a failed test prints to reproduce them: "[  seed    ] ... MOE_TEST_SEED=n".
// Binaries without that line (the MPI tests' main, which only needs one seed for all ranks)
// include run_seed.h alone.
#pragma once
#include <gtest/gtest.h>

#include <cstdio>

#include "tests/cuda/run_seed.h"

namespace moe::test {

// On a failed test, the line that reproduces its inputs.
class PrintSeedOnFailure : public ::testing::EmptyTestEventListener {
  void OnTestEnd(const ::testing::TestInfo& info) override {
    if (info.result() != nullptr && info.result()->Failed())
      std::printf("[  seed    ] %s.%s drew its inputs with MOE_TEST_SEED=%llu (set it to draw them again)\n",
                  info.test_suite_name(), info.name(), static_cast<unsigned long long>(run_seed()));
  }
};

// Installed once per binary, before main() runs the tests (an inline variable: one instance
// whichever test files include this header).
inline const bool seed_listener_installed = [] {
  ::testing::UnitTest::GetInstance()->listeners().Append(new PrintSeedOnFailure);
  return true;
}();

}  // namespace moe::test
