// Tests of the emulated cp.async (core/cuda/async_copy.h): a copy lands only at its issuer's wait
// (a read before it sees the shared memory's poison), wait<N> leaves the newest N groups pending
// and ignores copies not yet committed, !pred zero-fills, another thread's copy is visible after
// its wait and a barrier, misaligned copies are errors, and a block's pending copies do not leak
// into the next block.
#ifdef MOE_CUDA_EMULATION
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/cuda/async_copy.h"
#include "core/cuda/launch.h"
#include "core/cuda/memory.h"
#include "core/error.h"

using namespace moe;
using namespace moe::cuda;

namespace {

// 4 floats = one 16-byte copy. out receives snapshots of the 3 shared chunks at each step.
constexpr int kChunk = 4, kChunks = 3, kSnap = kChunk * kChunks;

__device__ void snapshot(const float* smem, float* out, int step) {
  for (int i = 0; i < kSnap; ++i) out[step * kSnap + i] = smem[i];
}

// One thread: chunk 0 in group 0, chunk 1 in group 1, chunk 2 zero-filled in group 1 too.
__global__ void groups_kernel(const float* src, float* out) {
  MOE_DYNAMIC_SHARED(float, smem);
  cp_async16(smem, src, true);
  cp_async_commit();
  cp_async16(smem + kChunk, src + kChunk, true);
  cp_async16(smem + 2 * kChunk, src + 2 * kChunk, false);
  snapshot(smem, out, 0);  // nothing has landed: poison everywhere
  cp_async_commit();
  cp_async_wait<2>();      // both groups may stay pending
  snapshot(smem, out, 1);
  cp_async_wait<1>();      // group 0 lands, group 1 stays pending
  snapshot(smem, out, 2);
  cp_async_wait<0>();      // everything lands
  snapshot(smem, out, 3);
}

bool poisoned(float v) { return std::isnan(v); }

TEST(CudaEmulationAsyncCopy, CopiesLandOnlyAtTheWaitOldestGroupFirst) {
  std::vector<float> src(kSnap);
  for (int i = 0; i < kSnap; ++i) src[static_cast<size_t>(i)] = float(i + 1);
  DeviceBuffer<float> dsrc(src), out(4 * kSnap);
  MOE_LAUNCH(groups_kernel, 1, 1, kSnap * sizeof(float), nullptr, dsrc.get(), out.get());
  auto got = out.to_host();
  auto at = [&](int step, int i) { return got[static_cast<size_t>(step * kSnap + i)]; };
  for (int step : {0, 1})
    for (int i = 0; i < kSnap; ++i) EXPECT_TRUE(poisoned(at(step, i))) << "step " << step << " element " << i;
  for (int i = 0; i < kChunk; ++i) EXPECT_EQ(at(2, i), float(i + 1)) << "wait<1> performs the older group";
  for (int i = kChunk; i < kSnap; ++i) EXPECT_TRUE(poisoned(at(2, i))) << "wait<1> leaves the newest group, " << i;
  for (int i = 0; i < 2 * kChunk; ++i) EXPECT_EQ(at(3, i), float(i + 1));
  for (int i = 2 * kChunk; i < kSnap; ++i) EXPECT_EQ(at(3, i), 0.0f) << "!pred zero-fills";
}

// Copies issued after the last commit belong to no group: wait<0> does not perform them.
__global__ void uncommitted_kernel(const float* src, float* out) {
  MOE_DYNAMIC_SHARED(float, smem);
  cp_async16(smem, src, true);
  cp_async_wait<0>();
  out[0] = smem[0];
  cp_async_commit();
  cp_async_wait<0>();
  out[1] = smem[0];
}

TEST(CudaEmulationAsyncCopy, UncommittedCopiesAreNotWaitedFor) {
  DeviceBuffer<float> dsrc(std::vector<float>{5, 6, 7, 8}), out(2);
  MOE_LAUNCH(uncommitted_kernel, 1, 1, 16, nullptr, dsrc.get(), out.get());
  auto got = out.to_host();
  EXPECT_TRUE(poisoned(got[0]));
  EXPECT_EQ(got[1], 5.0f);
}

// Thread 1 copies a chunk; thread 0 reads it after a barrier, first before thread 1's wait (poison,
// deterministically: the copy has not happened anywhere), then after it.
__global__ void cross_thread_kernel(const float* src, float* out) {
  MOE_DYNAMIC_SHARED(float, smem);
  if (threadIdx.x == 1) {
    cp_async16(smem, src, true);
    cp_async_commit();
  }
  __syncthreads();
  if (threadIdx.x == 0) out[0] = smem[0];
  __syncthreads();
  if (threadIdx.x == 1) cp_async_wait<0>();
  __syncthreads();
  if (threadIdx.x == 0) out[1] = smem[0];
}

TEST(CudaEmulationAsyncCopy, AnotherThreadsCopyIsVisibleAfterItsWaitAndABarrier) {
  DeviceBuffer<float> dsrc(std::vector<float>{9, 1, 2, 3}), out(2);
  MOE_LAUNCH(cross_thread_kernel, 1, 2, 16, nullptr, dsrc.get(), out.get());
  auto got = out.to_host();
  EXPECT_TRUE(poisoned(got[0])) << "read before the issuing thread waited";
  EXPECT_EQ(got[1], 9.0f);
}

__global__ void misaligned_kernel(const float* src) {
  MOE_DYNAMIC_SHARED(float, smem);
  cp_async16(smem, src + 1, true);
}

TEST(CudaEmulationAsyncCopy, MisalignedCopyIsAnError) {
  DeviceBuffer<float> dsrc(std::vector<float>(8, 1.0f));
  EXPECT_THROW(MOE_LAUNCH(misaligned_kernel, 1, 1, 32, nullptr, dsrc.get()), Error);
}

// Block 0 leaves a group pending and exits; block 1 (same host threads) waits for everything: the
// stale copy must not land in block 1's shared memory.
__global__ void leftover_kernel(const float* src, float* out) {
  MOE_DYNAMIC_SHARED(float, smem);
  if (blockIdx.x == 0) {
    cp_async16(smem, src, true);
    cp_async_commit();
    return;
  }
  cp_async_wait<0>();
  out[0] = smem[0];
}

TEST(CudaEmulationAsyncCopy, PendingCopiesDoNotLeakIntoTheNextBlock) {
  DeviceBuffer<float> dsrc(std::vector<float>{4, 4, 4, 4}), out(1);
  MOE_LAUNCH(leftover_kernel, 2, 1, 16, nullptr, dsrc.get(), out.get());
  EXPECT_TRUE(poisoned(out.to_host()[0]));
}

}  // namespace
#endif  // MOE_CUDA_EMULATION
