// The emulation's checks of what fails only on a GPU: shared memory above 48 KiB without an
// opt-in and the per-arch limits, launch limits, a divergent __syncthreads, a deadlock between a
// warp op and __syncthreads. Each kernel here is a planted bug that the emulation must refuse with
// one line naming the kernel.
#ifdef MOE_CUDA_EMULATION
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "core/cuda/caching_allocator.h"
#include "core/cuda/launch.h"
#include "core/cuda/memory.h"

using namespace moe;
using namespace moe::cuda;

namespace {

// Runs `launch` and returns the error's text ("" if it did not throw).
template <class F>
std::string error_of(F&& launch) {
  try {
    launch();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// Restores the emulated target when a test ends (also on a failed expectation).
struct TargetSm {
  int previous;
  explicit TargetSm(int sm) : previous(emu::set_target_sm(sm)) {}
  ~TargetSm() { emu::set_target_sm(previous); }
};

// One instance per test (kId): an opt-in lasts for the process, as on the GPU.
template <int kId>
__global__ void touch_dynamic_kernel(int* out, int n) {
  MOE_DYNAMIC_SHARED(int, buf);
  for (int i = threadIdx.x; i < n; i += blockDim.x) buf[i] = i;
  __syncthreads();
  if (threadIdx.x == 0) out[0] = buf[n - 1];
}
__global__ void touch_dynamic_other_kernel(int* out, int n) {
  MOE_DYNAMIC_SHARED(int, buf);
  buf[n - 1] = 7;
  out[0] = buf[n - 1];
}

TEST(CudaEmulationHazards, DynamicSharedAbove48KiBNeedsTheKernelsOwnOptIn) {
  DeviceBuffer<int> out(1);
  const int n = 50 * 1024 / 4;  // 50 KiB
  const std::string no_opt_in = error_of([&] { MOE_LAUNCH(touch_dynamic_kernel<0>, 1, 64, 4 * n, nullptr, out.get(), n); });
  EXPECT_TRUE(contains(no_opt_in, "touch_dynamic_kernel") && contains(no_opt_in, "allow_dynamic_shared")) << no_opt_in;

  allow_dynamic_shared("test", touch_dynamic_kernel<0>, 4 * n);
  MOE_LAUNCH(touch_dynamic_kernel<0>, 1, 64, 4 * n, nullptr, out.get(), n);
  EXPECT_EQ(out.to_host()[0], n - 1);
  // Above the kernel's opt-in, and the opt-in is per kernel: another kernel still has none.
  const std::string above = error_of([&] { MOE_LAUNCH(touch_dynamic_kernel<0>, 1, 64, 4 * n + 16, nullptr, out.get(), n); });
  EXPECT_TRUE(contains(above, "opt-in of " + std::to_string(4 * n))) << above;
  const std::string other =
      error_of([&] { MOE_LAUNCH(touch_dynamic_other_kernel, 1, 32, 4 * n, nullptr, out.get(), n); });
  EXPECT_TRUE(contains(other, "touch_dynamic_other_kernel")) << other;
}

TEST(CudaEmulationHazards, OptInLimitsPerArch) {
  const size_t sm80 = 163 * 1024, sm90 = 227 * 1024;
  {
    TargetSm target(80);
    EXPECT_NO_THROW(allow_dynamic_shared("test", touch_dynamic_kernel<1>, sm80));
    const std::string e = error_of([&] { allow_dynamic_shared("test", touch_dynamic_kernel<1>, sm80 + 16); });
    EXPECT_TRUE(contains(e, "sm_80")) << e;
  }
  {
    TargetSm target(90);
    EXPECT_NO_THROW(allow_dynamic_shared("test", touch_dynamic_kernel<1>, sm90));
    DeviceBuffer<int> out(1);
    const int n = int(sm90 / 4);
    MOE_LAUNCH(touch_dynamic_kernel<1>, 1, 128, sm90, nullptr, out.get(), n);
    EXPECT_EQ(out.to_host()[0], n - 1);
    EXPECT_FALSE(error_of([&] { allow_dynamic_shared("test", touch_dynamic_kernel<1>, sm90 + 16); }).empty());
  }
}

__global__ void static_40k_kernel(int* out) {
  MOE_SHARED(int, big, [10 * 1024]);  // 40 KiB
  MOE_DYNAMIC_SHARED(int, dyn);
  big[threadIdx.x] = 1;
  dyn[threadIdx.x] = 2;
  __syncthreads();
  out[threadIdx.x] = big[threadIdx.x] + dyn[threadIdx.x];
}
__global__ void static_52k_kernel(int* out) {
  MOE_SHARED(int, big, [13 * 1024]);  // 52 KiB: nvcc refuses this
  big[threadIdx.x] = 1;
  out[threadIdx.x] = big[threadIdx.x];
}

// Without an opt-in, static + dynamic must fit 48 KiB (the GPU's default dynamic limit is 48 KiB
// minus the static part); with one, static + the opt-in must fit the target.
TEST(CudaEmulationHazards, StaticPlusDynamicSharedMemory) {
  DeviceBuffer<int> out(32);
  MOE_LAUNCH(static_40k_kernel, 1, 32, 8 * 1024, nullptr, out.get());  // 48 KiB in all: fine
  EXPECT_EQ(out.to_host()[0], 3);
  const std::string over = error_of([&] { MOE_LAUNCH(static_40k_kernel, 1, 32, 16 * 1024, nullptr, out.get()); });
  EXPECT_TRUE(contains(over, "static_40k_kernel") && contains(over, "allow_dynamic_shared")) << over;
  allow_dynamic_shared("test", static_40k_kernel, 16 * 1024);
  MOE_LAUNCH(static_40k_kernel, 1, 32, 16 * 1024, nullptr, out.get());
  EXPECT_EQ(out.to_host()[0], 3);
  const std::string above = error_of([&] { MOE_LAUNCH(static_40k_kernel, 1, 32, 16 * 1024 + 4, nullptr, out.get()); });
  EXPECT_TRUE(contains(above, "opt-in of 16384")) << above;
  const std::string too_much = error_of([&] {
    allow_dynamic_shared("test", static_40k_kernel, 163 * 1024 - 16);  // fits alone, not with 40 KiB static
    MOE_LAUNCH(static_40k_kernel, 1, 32, 1024, nullptr, out.get());
  });
  EXPECT_TRUE(contains(too_much, "static_40k_kernel") && contains(too_much, "opted in")) << too_much;
  const std::string big = error_of([&] { MOE_LAUNCH(static_52k_kernel, 1, 32, 0, nullptr, out.get()); });
  EXPECT_TRUE(contains(big, "static_52k_kernel") && contains(big, "static")) << big;
}

__global__ void noop_kernel(int* out) {
  if (out) out[0] = 1;
}

TEST(CudaEmulationHazards, LaunchLimits) {
  int* none = nullptr;
  for (dim3 grid : {dim3(0), dim3(1, 65536), dim3(1, 1, 65536), dim3(0x80000000u)}) {
    const std::string e = error_of([&] { MOE_LAUNCH(noop_kernel, grid, 32, 0, nullptr, none); });
    EXPECT_TRUE(contains(e, "noop_kernel") && contains(e, "grid")) << grid.x << " " << grid.y << " " << grid.z;
  }
  for (dim3 block : {dim3(0), dim3(1025), dim3(32, 33), dim3(1, 1, 65)}) {
    const std::string e = error_of([&] { MOE_LAUNCH(noop_kernel, 1, block, 0, nullptr, none); });
    EXPECT_TRUE(contains(e, "noop_kernel") && contains(e, "block")) << block.x << " " << block.y << " " << block.z;
  }
  EXPECT_NO_THROW(MOE_LAUNCH(noop_kernel, dim3(2, 65535), 1, 0, nullptr, none));
}

// The planted bug: half the block waits at one barrier, half at another. The emulation's barrier
// counts threads and would let both through; a GPU may hang.
__global__ void divergent_barrier_kernel(int* out) {
  MOE_SHARED(int, v, [64]);
  v[threadIdx.x] = int(threadIdx.x);
  if (threadIdx.x < 16) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = v[63 - threadIdx.x];
}
// Legal: threads that exit do not hold a barrier up, and one call site in a loop is one barrier.
__global__ void exit_then_barrier_kernel(int* out) {
  MOE_SHARED(int, v, [64]);
  if (threadIdx.x >= 48) return;
  for (int round = 0; round < 3; ++round) {
    v[threadIdx.x] = int(threadIdx.x) + round;
    __syncthreads();
    out[threadIdx.x] = v[47 - threadIdx.x];
    __syncthreads();
  }
}

TEST(CudaEmulationHazards, DivergentSyncthreadsIsCaught) {
  DeviceBuffer<int> out(64);
  const std::string e = error_of([&] { MOE_LAUNCH(divergent_barrier_kernel, 2, 64, 0, nullptr, out.get()); });
  EXPECT_TRUE(contains(e, "divergent_barrier_kernel") && contains(e, "divergent __syncthreads")) << e;
  MOE_LAUNCH(exit_then_barrier_kernel, 3, 64, 0, nullptr, out.get());
  const auto got = out.to_host();
  for (int t = 0; t < 48; ++t) EXPECT_EQ(got[t], 47 - t + 2) << t;
}

// The planted bug: lane 0 of every warp shuffles with the full mask while lanes 1-31 wait at
// __syncthreads. The shuffle waits for lanes that wait for lane 0: a GPU hangs. The emulation must
// fail the launch naming the deadlock and the barriers, not hang (it used to, until ctest's
// timeout, with no message).
__global__ void shuffle_skipped_kernel(float* out) {
  float v = float(threadIdx.x);
  if (threadIdx.x % 32 == 0) v = __shfl_down_sync(0xffffffffu, v, 1);
  __syncthreads();
  out[threadIdx.x] = v;
}
// Legal: the same shape with every lane in the shuffle, and the block's barrier after it.
__global__ void shuffle_then_barrier_kernel(float* out) {
  float v = __shfl_down_sync(0xffffffffu, float(threadIdx.x), 1);
  __syncthreads();
  out[threadIdx.x] = v;
}

TEST(CudaEmulationHazards, WarpOpSkippedByLanesAtABarrierIsADeadlock) {
  DeviceBuffer<float> out(96);
  const std::string e = error_of([&] { MOE_LAUNCH(shuffle_skipped_kernel, 2, 96, 0, nullptr, out.get()); });
  EXPECT_TRUE(contains(e, "shuffle_skipped_kernel") && contains(e, "deadlock")) << e;
  // Each barrier is named with its waiters: 93 of 96 threads at __syncthreads, one lane per warp.
  EXPECT_TRUE(contains(e, "93 of 96 at __syncthreads") && contains(e, "1 of 32 at warp 0's warp op")) << e;
  // The runtime is usable after a deadlocked launch, and the legal shape passes.
  MOE_LAUNCH(shuffle_then_barrier_kernel, 2, 96, 0, nullptr, out.get());
  const auto got = out.to_host();
  for (int t = 0; t < 96; ++t) EXPECT_EQ(got[size_t(t)], float(t % 32 == 31 ? t : t + 1)) << t;
}

// A block the caching allocator hands out again holds its last user's data (zeros here): a kernel
// that reads scratch before writing it would see plausible numbers. Under the emulation a reused
// block is poisoned as fresh device memory is.
TEST(CudaEmulationHazards, ReusedWorkspaceIsPoisoned) {
  const size_t n = 301;
  void* first = nullptr;
  {
    Workspace<float> w(n);
    first = w.get();
    device_memset(w.get(), 0, n * sizeof(float));
  }
  Workspace<float> again(n);
  ASSERT_EQ(static_cast<void*>(again.get()), first) << "expected the cached block back";
  std::vector<uint32_t> bits(n);
  copy_to_host(bits.data(), again.get(), n * sizeof(float));
  for (size_t i = 0; i < n; ++i) ASSERT_EQ(bits[i], 0xFFFFFFFFu) << "element " << i << " kept its old value";
}

}  // namespace
#endif  // MOE_CUDA_EMULATION
