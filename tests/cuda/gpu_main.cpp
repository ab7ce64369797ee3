// main() of the GPU run of the kernel tests (ctest -L gpu): the same tests/cuda/*_test.cpp as the
// emulation run, linked against the real CUDA build; exits 77 (ctest: skipped) without a GPU.
#include <gtest/gtest.h>

#include <cstdio>

#include "core/cuda/device.h"

int main(int argc, char** argv) {
  std::string why = moe::cuda::device_unavailable_reason();
  if (!why.empty()) {
    std::printf("no CUDA device: %s; skipping the GPU kernel tests\n", why.c_str());
    return 77;
  }
  auto info = moe::cuda::require_device(0);
  std::printf("GPU kernel tests on %s (sm_%d%d, %d SMs)\n", info.name.c_str(), info.major, info.minor,
              info.multiprocessors);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
