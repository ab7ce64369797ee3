// The MoE layer's choice between the grouped expert GEMM and one cuBLAS GEMM per expert
// (use_grouped_kernel, core/cuda/ops/moe_ops.cpp): grouped below the switch (1024 rows per expert
// on average with the cp.async wgmma kernels, 384 with the mma kernel), per expert at and above it;
// grouped at every size with the TMA kernels (wgmma4, wgmma5) and for experts narrower than 512;
// MOE_EXPERT_GEMM overrides both ways.
#include <gtest/gtest.h>

#include "core/cuda/grouped_gemm_sm90.h"
#include "core/cuda/ops/experts_per_expert.h"
#include "core/error.h"
#include "tests/env_scope.h"

using namespace moe::cuda;

namespace {

void expect_switch_at(int64_t per_expert_rows) {
  for (int64_t E : {16, 64}) {
    EXPECT_TRUE(use_grouped_kernel((per_expert_rows - 1) * E, E, 1024, 2048)) << E;
    EXPECT_FALSE(use_grouped_kernel(per_expert_rows * E, E, 1024, 2048)) << E;
    EXPECT_TRUE(use_grouped_kernel(4096 * E, E, 128, 128)) << "narrow experts stay grouped";
    EXPECT_TRUE(use_grouped_kernel(4096 * E, E, 1024, 256)) << "narrow hidden stays grouped";
  }
  EXPECT_TRUE(use_grouped_kernel(0, 16, 1024, 2048));
}

TEST(ExpertGemmChoice, SwitchFollowsTheGroupedKernel) {
  moe::test::EnvScope unset("MOE_EXPERT_GEMM", nullptr);
  {
    GroupedGemmKernelScope mma("mma");
    expect_switch_at(384);
  }
  {
    GroupedGemmKernelScope wgmma2("wgmma2");
    bool sm90 = true;  // the emulation models sm_90a; a GPU other than sm_90 refuses wgmma2
    try {
      grouped_gemm_kernel();
    } catch (const moe::Error&) {
      sm90 = false;
    }
    if (sm90) expect_switch_at(1024);
  }
  for (const char* tma : {"wgmma4", "wgmma5"}) {  // sm_90 only, as wgmma2
    GroupedGemmKernelScope scope(tma);
    try {
      grouped_gemm_kernel();
    } catch (const moe::Error&) {
      continue;
    }
    for (int64_t E : {16, 64}) EXPECT_TRUE(use_grouped_kernel(4096 * E, E, 1024, 2048)) << tma << ", E " << E;
  }
}

TEST(ExpertGemmChoice, EnvironmentOverridesBothWays) {
  GroupedGemmKernelScope mma("mma");
  {
    moe::test::EnvScope grouped("MOE_EXPERT_GEMM", "grouped");
    EXPECT_TRUE(use_grouped_kernel(4096 * 16, 16, 1024, 2048));
  }
  {
    moe::test::EnvScope per_expert("MOE_EXPERT_GEMM", "per_expert");
    EXPECT_FALSE(use_grouped_kernel(16, 16, 128, 128));
  }
}

}  // namespace
