// The kernel profiler (core/cuda/kernel_profile.h): with profiling on, each launch and copy is
// counted under its name and timed; off, nothing is recorded; the table lists what was counted
// and a take through the backend resets it. Runs on the GPU too (the event-pair path).
#include <gtest/gtest.h>

#include <string>
#include <utility>

#include "core/cuda/elementwise.h"
#include "core/cuda/kernel_profile.h"
#include "core/cuda/memory.h"
#include "core/cuda/ops/cuda_backend.h"
#include "tests/cuda/kernel_test_util.h"

using namespace moe;
using namespace moe::cuda;

namespace {

// Restores the profiler's switch (it is process-wide).
struct ProfileOn {
  explicit ProfileOn(bool on) : was(kernel_profile_enabled()) {
    set_kernel_profile(on);
    kernel_profile_reset();
  }
  ~ProfileOn() {
    kernel_profile_reset();
    set_kernel_profile(was);
  }
  bool was;
};

const KernelTotal* find(const std::vector<KernelTotal>& all, const std::string& part) {
  for (const KernelTotal& t : all)
    if (t.name.find(part) != std::string::npos) return &t;
  return nullptr;
}

TEST(CudaKernelProfile, CountsEachLaunchAndCopyUnderItsName) {
  ProfileOn on(true);
  const std::vector<float> x = test::random_normal(1001, 3);
  DeviceBuffer<float> dx(x), back(x.size());  // one host-to-device copy
  DeviceBuffer<bf16> db(x.size());
  for (int i = 0; i < 3; ++i) cast_f32_to_bf16(dx.get(), db.get(), x.size());
  cast_bf16_to_f32(db.get(), back.get(), x.size());
  back.to_host();  // one device-to-host copy
  const std::vector<KernelTotal> all = kernel_profile_totals();
  // name, calls (the copies: at least one; other helpers may copy too)
  const std::pair<const char*, int64_t> want[] = {{"cast_kernel<float, dbf16>", 3},
                                                  {"cast_kernel<dbf16, float>", 1},
                                                  {"host to device", -1},
                                                  {"device to host", -1}};
  for (const auto& [name, calls] : want) {
    const KernelTotal* t = find(all, name);
    ASSERT_NE(t, nullptr) << name;
    if (calls > 0)
      EXPECT_EQ(t->calls, calls) << name;
    else
      EXPECT_GE(t->calls, 1) << name;
    EXPECT_GE(t->ms, 0.0) << name;
  }
  EXPECT_GT(find(all, "cast_kernel<float, dbf16>")->ms, 0.0);
  for (size_t i = 1; i < all.size(); ++i) EXPECT_GE(all[i - 1].ms, all[i].ms) << "largest first";

  const std::string table = kernel_profile_table();
  EXPECT_NE(table.find("cast_kernel<float, dbf16>"), std::string::npos) << table;
  EXPECT_NE(table.find("all profiled"), std::string::npos) << table;
  // A take through the backend returns the table and starts over.
  install_backend("CudaKernelProfile");
  EXPECT_NE(cuda_backend("CudaKernelProfile").take_kernel_profile().find("cast_kernel"), std::string::npos);
  EXPECT_TRUE(kernel_profile_totals().empty());
}

TEST(CudaKernelProfile, RecordsNothingWhenOff) {
  ProfileOn off(false);
  const std::vector<float> x = test::random_normal(257, 4);
  DeviceBuffer<float> dx(x);
  DeviceBuffer<bf16> db(x.size());
  cast_f32_to_bf16(dx.get(), db.get(), x.size());
  EXPECT_TRUE(kernel_profile_totals().empty());
  EXPECT_EQ(kernel_profile_table(), "");
  install_backend("CudaKernelProfile");
  EXPECT_EQ(cuda_backend("CudaKernelProfile").take_kernel_profile(), "");
}

}  // namespace
