// Tests of the kernel emulation itself: barriers, per-block shared memory, warp shuffles and
// votes, atomics, launch errors, and the planted bug (a missing __syncthreads must be caught).
#ifdef MOE_CUDA_EMULATION
#include <gtest/gtest.h>

#include <numeric>
#include <random>
#include <vector>

#include "core/cuda/launch.h"
#include "core/cuda/memory.h"
#include "tests/cuda/test_seed.h"

using namespace moe;
using namespace moe::cuda;

namespace {

constexpr int kReduceThreads = 256;

// The textbook shared-memory tree reduction; one block per chunk of kReduceThreads inputs.
__global__ void tree_sum_kernel(const float* in, float* out, int n) {
  MOE_SHARED(float, partial, [1024]);
  int tid = threadIdx.x, i = blockIdx.x * blockDim.x + threadIdx.x;
  partial[tid] = i < n ? in[i] : 0.0f;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (tid < s) partial[tid] += partial[tid + s];
    __syncthreads();
  }
  if (tid == 0) out[blockIdx.x] = partial[0];
}

// The planted bug: the same reduction with its barriers removed.
__global__ void tree_sum_no_sync_kernel(const float* in, float* out, int n) {
  MOE_SHARED(float, partial, [kReduceThreads]);
  int tid = threadIdx.x, i = blockIdx.x * blockDim.x + threadIdx.x;
  partial[tid] = i < n ? in[i] : 0.0f;
  for (int s = blockDim.x / 2; s > 0; s >>= 1)
    if (tid < s) partial[tid] += partial[tid + s];
  if (tid == 0) out[blockIdx.x] = partial[0];
}

// Integer-valued inputs so that every correct summation order is exact.
std::vector<float> small_integers(int n, unsigned seed) {
  std::mt19937 gen(uint32_t(test::test_seed(seed)));
  std::uniform_int_distribution<int> d(-50, 50);
  std::vector<float> v(n);
  for (auto& x : v) x = float(d(gen));
  return v;
}

std::vector<float> block_sums(const std::vector<float>& v, int block) {
  std::vector<float> out((v.size() + block - 1) / block, 0.0f);
  for (size_t i = 0; i < v.size(); ++i) out[i / block] += v[i];
  return out;
}

TEST(CudaEmulation, TreeReductionWithBarriersIsExact) {
  const int n = 12 * kReduceThreads - 77;  // the last block is partial
  auto host = small_integers(n, 1);
  DeviceBuffer<float> in(host), out(ceil_div(n, kReduceThreads));
  MOE_LAUNCH(tree_sum_kernel, ceil_div(n, kReduceThreads), kReduceThreads, 0, nullptr, in.get(), out.get(), n);
  EXPECT_EQ(out.to_host(), block_sums(host, kReduceThreads));
}

TEST(CudaEmulation, FullSizeBlockOf1024Threads) {
  const int n = 1024 + 333;
  auto host = small_integers(n, 6);
  DeviceBuffer<float> in(host), out(2);
  MOE_LAUNCH(tree_sum_kernel, 2, 1024, 0, nullptr, in.get(), out.get(), n);
  EXPECT_EQ(out.to_host(), block_sums(host, 1024));
}

__global__ void index_kernel(int* out) {
  const int block = (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
  const int thread = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
  const int per_block = blockDim.x * blockDim.y * blockDim.z;
  out[block * per_block + thread] = ((((blockIdx.z * 10 + blockIdx.y) * 10 + blockIdx.x) * 10 + threadIdx.z) * 10 +
                                     threadIdx.y) * 10 + threadIdx.x;
}

TEST(CudaEmulation, ThreeDimensionalGridAndBlockIndices) {
  const dim3 grid(3, 2, 2), block(4, 3, 2);
  DeviceBuffer<int> out(12 * 24);
  MOE_LAUNCH(index_kernel, grid, block, 0, nullptr, out.get());
  auto got = out.to_host();
  int i = 0;
  for (int bz = 0; bz < 2; ++bz)
    for (int by = 0; by < 2; ++by)
      for (int bx = 0; bx < 3; ++bx)
        for (int tz = 0; tz < 2; ++tz)
          for (int ty = 0; ty < 3; ++ty)
            for (int tx = 0; tx < 4; ++tx)
              EXPECT_EQ(got[i++], ((((bz * 10 + by) * 10 + bx) * 10 + tz) * 10 + ty) * 10 + tx);
}

TEST(CudaEmulation, PlantedBugMissingSyncthreadsIsCaught) {
  // Without barriers a thread reads partial sums its neighbours have not written yet (poisoned
  // shared memory, or stale values): the result must come out wrong on every attempt.
  const int n = 12 * kReduceThreads - 77;
  auto host = small_integers(n, 2);
  const auto expected = block_sums(host, kReduceThreads);
  for (int attempt = 0; attempt < 5; ++attempt) {
    DeviceBuffer<float> in(host), out(expected.size());
    MOE_LAUNCH(tree_sum_no_sync_kernel, unsigned(expected.size()), kReduceThreads, 0, nullptr, in.get(), out.get(),
               n);
    auto got = out.to_host();
    int wrong = 0;
    for (size_t b = 0; b < got.size(); ++b) wrong += !(got[b] == expected[b]);
    EXPECT_GT(wrong, 0) << "attempt " << attempt << ": the missing barrier went unnoticed";
  }
}

__global__ void rotate_kernel(const int* in, int* out, int rounds) {
  MOE_SHARED(int, ring, [1024]);
  int n = blockDim.x * blockDim.y, tid = threadIdx.y * blockDim.x + threadIdx.x;
  int v = in[blockIdx.x * n + tid];
  for (int r = 0; r < rounds; ++r) {
    ring[tid] = v;
    __syncthreads();
    v = ring[(tid + 1) % n];  // each round every value moves one place down the ring
    __syncthreads();
  }
  out[blockIdx.x * n + tid] = v;
}

TEST(CudaEmulation, SyncthreadsOrdersSharedMemoryAcross2DBlocks) {
  const dim3 block(19, 7);  // 133 threads: 2D, and not a multiple of the warp
  const int n = 133, blocks = 3, rounds = 25;
  std::vector<int> host(n * blocks);
  std::iota(host.begin(), host.end(), 1000);
  DeviceBuffer<int> in(host), out(host.size());
  MOE_LAUNCH(rotate_kernel, blocks, block, 0, nullptr, in.get(), out.get(), rounds);
  auto got = out.to_host();
  for (int b = 0; b < blocks; ++b)
    for (int t = 0; t < n; ++t) ASSERT_EQ(got[b * n + t], host[b * n + (t + rounds) % n]) << "block " << b << " thread " << t;
}

__global__ void early_exit_kernel(int* out) {
  MOE_SHARED(int, flag, [1]);
  if (threadIdx.x % 3 == 0) return;  // exited threads must not hold the barrier up
  if (threadIdx.x == 1) flag[0] = 42;
  __syncthreads();
  out[threadIdx.x] = flag[0];
}

TEST(CudaEmulation, ExitedThreadsDoNotBlockTheBarrier) {
  DeviceBuffer<int> out(100);
  out.zero();
  MOE_LAUNCH(early_exit_kernel, 1, 100, 0, nullptr, out.get());
  auto got = out.to_host();
  for (int t = 0; t < 100; ++t) EXPECT_EQ(got[t], t % 3 == 0 ? 0 : 42) << t;
}

__global__ void uninitialized_shared_kernel(float* out) {
  MOE_SHARED(float, scratch, [64]);
  if (blockIdx.x == 0) scratch[threadIdx.x] = 1.0f;  // block 1 never writes its own copy
  __syncthreads();
  out[blockIdx.x * 64 + threadIdx.x] = scratch[threadIdx.x];
}

TEST(CudaEmulation, SharedMemoryIsPerBlockAndPoisoned) {
  DeviceBuffer<float> out(128);
  MOE_LAUNCH(uninitialized_shared_kernel, 2, 64, 0, nullptr, out.get());
  auto got = out.to_host();
  for (int t = 0; t < 64; ++t) {
    EXPECT_EQ(got[t], 1.0f);
    EXPECT_TRUE(std::isnan(got[64 + t])) << "block 1 read block 0's shared memory";
  }
}

__global__ void dynamic_shared_kernel(const float* in, float* out, int n) {
  MOE_DYNAMIC_SHARED(float, buf);
  for (int i = threadIdx.x; i < n; i += blockDim.x) buf[i] = in[i];
  __syncthreads();
  for (int i = threadIdx.x; i < n; i += blockDim.x) out[i] = buf[n - 1 - i];
}

TEST(CudaEmulation, DynamicSharedMemory) {
  const int n = 301;
  auto host = small_integers(n, 3);
  DeviceBuffer<float> in(host), out(n);
  MOE_LAUNCH(dynamic_shared_kernel, 1, 64, n * sizeof(float), nullptr, in.get(), out.get(), n);
  auto got = out.to_host();
  for (int i = 0; i < n; ++i) EXPECT_EQ(got[i], host[n - 1 - i]);
}

__global__ void warp_ops_kernel(const float* in, float* down_sum, float* xor_sum, float* bcast, unsigned* ballot,
                                int* any_all) {
  int tid = blockIdx.x * blockDim.x + threadIdx.x, lane = threadIdx.x % 32;
  float v = in[tid];
  float s = v;
  for (int o = 16; o > 0; o >>= 1) s += __shfl_down_sync(0xffffffffu, s, o);
  if (lane == 0) down_sum[tid / 32] = s;
  float x = v;
  for (int o = 1; o < 32; o <<= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  xor_sum[tid] = x;
  bcast[tid] = __shfl_sync(0xffffffffu, v, 3) + __shfl_up_sync(0xffffffffu, v, 1);
  unsigned b = __ballot_sync(0xffffffffu, v > 0);
  if (lane == 0) ballot[tid / 32] = b;
  any_all[tid] = __any_sync(0xffffffffu, v > 40) * 2 + __all_sync(0xffffffffu, v > -51);
}

TEST(CudaEmulation, WarpShufflesAndVotes) {
  const int blocks = 3, threads = 96, n = blocks * threads, warps = n / 32;
  auto host = small_integers(n, 4);
  DeviceBuffer<float> in(host), down(warps), xs(n), bc(n);
  DeviceBuffer<unsigned> ballot(warps);
  DeviceBuffer<int> anyall(n);
  MOE_LAUNCH(warp_ops_kernel, blocks, threads, 0, nullptr, in.get(), down.get(), xs.get(), bc.get(), ballot.get(),
             anyall.get());
  auto d = down.to_host(), x = xs.to_host(), b = bc.to_host();
  auto bal = ballot.to_host();
  auto aa = anyall.to_host();
  for (int w = 0; w < warps; ++w) {
    float sum = 0;
    unsigned mask = 0;
    bool any = false;
    for (int l = 0; l < 32; ++l) {
      float v = host[w * 32 + l];
      sum += v;
      mask |= unsigned(v > 0) << l;
      any = any || v > 40;
    }
    EXPECT_EQ(d[w], sum) << "warp " << w;
    EXPECT_EQ(bal[w], mask) << "warp " << w;
    for (int l = 0; l < 32; ++l) {
      int t = w * 32 + l;
      EXPECT_EQ(x[t], sum);
      float up = l == 0 ? host[t] : host[t - 1];  // shfl_up keeps lane 0's own value
      EXPECT_EQ(b[t], host[w * 32 + 3] + up);
      EXPECT_EQ(aa[t], int(any) * 2 + 1);
    }
  }
}

__global__ void partial_mask_kernel(float* out) { out[threadIdx.x] = __shfl_down_sync(0x0000ffffu, 1.0f, 1); }

TEST(CudaEmulation, LaunchErrorsNameTheKernel) {
  DeviceBuffer<float> out(64);
  try {
    MOE_LAUNCH(partial_mask_kernel, 1, 2048, 0, nullptr, out.get());
    FAIL() << "a 2048-thread block was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("partial_mask_kernel"), std::string::npos) << e.what();
  }
  try {
    MOE_LAUNCH(partial_mask_kernel, 1, 32, 0, nullptr, out.get());
    FAIL() << "a warp op that leaves live lanes out of its mask was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("mask"), std::string::npos) << e.what();
  }
}

__global__ void atomics_kernel(const int* bins, int* hist, float* fsum, int* imax, float* fmax, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  atomicAdd(&hist[bins[i]], 1);
  atomicAdd(fsum, 0.5f);
  atomicMax(imax, bins[i] * 7 - i % 13);
  // float max through atomicCAS on the bits: the classic CUDA idiom
  float v = float(i % 1000) * 0.25f;
  int* bits = reinterpret_cast<int*>(fmax);
  int old = *bits;
  while (__int_as_float(old) < v) {
    int seen = atomicCAS(bits, old, __float_as_int(v));
    if (seen == old) break;
    old = seen;
  }
}

TEST(CudaEmulation, AtomicsAreExactUnderContention) {
  const int n = 5003, nbins = 11;
  std::vector<int> bins(n);
  std::mt19937 gen(uint32_t(test::test_seed(5)));
  for (auto& b : bins) b = int(gen() % nbins);
  DeviceBuffer<int> dbins(bins), hist(nbins), imax(1);
  DeviceBuffer<float> fsum(1), fmax(1);
  hist.zero();
  fsum.zero();
  copy_to_device(imax.get(), std::vector<int>{-1000}.data(), sizeof(int));
  copy_to_device(fmax.get(), std::vector<float>{-1.0f}.data(), sizeof(float));
  MOE_LAUNCH(atomics_kernel, ceil_div(n, 128), 128, 0, nullptr, dbins.get(), hist.get(), fsum.get(), imax.get(),
             fmax.get(), n);
  std::vector<int> expect(nbins, 0);
  int emax = -1000;
  for (int i = 0; i < n; ++i) {
    expect[bins[i]]++;
    emax = std::max(emax, bins[i] * 7 - i % 13);
  }
  EXPECT_EQ(hist.to_host(), expect);
  EXPECT_EQ(fsum.to_host()[0], 0.5f * n);
  EXPECT_EQ(imax.to_host()[0], emax);
  EXPECT_EQ(fmax.to_host()[0], 999 * 0.25f);
}

}  // namespace
#endif  // MOE_CUDA_EMULATION
