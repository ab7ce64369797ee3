// Tests of the emulated Hopper wgmma (core/cuda/wgmma.h, emulation_wgmma.h): operands placed in
// shared memory by the documented K-major layouts (no swizzle, 128B swizzle) multiply to the CPU
// product exactly, over several k16 steps chained through one commit group; every thread's
// accumulator registers hold the documented entries; a kernel that reads the accumulators before
// its wait_group sees no product, one that overwrites an operand before it, or issues before its
// stage's copies landed, is a race error; misuse is a one-line error.
#ifdef MOE_CUDA_EMULATION
#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "core/cuda/async_copy.h"
#include "core/cuda/launch.h"
#include "core/cuda/memory.h"
#include "core/cuda/wgmma.h"
#include "core/error.h"
#include "tests/cuda/kernel_test_util.h"

using namespace moe;
using namespace moe::cuda;
using namespace moe::test;

namespace {

constexpr int kM = 64, kN = 128;

// Where K-major element (r, k) of a [rows][K] operand goes, written from the PTX ISA's canonical
// layouts independently of the emulation's decoder. No swizzle: core matrices of 8 rows x 8 k
// (128 contiguous bytes), the K-neighbour core matrix kLbo bytes on, the next 8 rows kSbo on.
// 128B swizzle: 128-byte rows of 64 k, 8-row atoms of 1024 bytes, chunk (k / 8) ^ (r % 8).
constexpr int kLboNone = 128, kSboNone = 4 * 128;  // K = 32: 4 core matrices along K per 8 rows
// MN-major 128B swizzle: [k][r] 128-byte rows of 64 r, chunk ((r % 64) / 8) ^ (k % 8), the next 64
// r (B's second half) one [K][64] block (LBO = 128 K bytes) on, 8-deep K groups 1024 bytes apart.
enum Layout { kKNone = 0, kKSw128 = 1, kMnSw128 = 2 };
__host__ __device__ int offset_of(int layout, int r, int k, int K) {
  if (layout == kKNone) return (r / 8) * kSboNone + (k / 8) * kLboNone + (r % 8) * 16 + (k % 8) * 2;
  if (layout == kKSw128) return r * 128 + (((k / 8) ^ (r % 8)) * 16) + (k % 8) * 2;
  return (r / 64) * (K * 128) + k * 128 + ((((r % 64) / 8) ^ (k % 8)) * 16) + (r % 8) * 2;
}
// The descriptor of the k16 step ks: K-major steps 32 bytes along the swizzled row or two core
// matrices (2 LBO); MN-major steps 16 rows of 128 bytes.
__host__ __device__ uint64_t step_desc(int layout, uint32_t base, int ks, int K) {
  if (layout == kKNone) return wgmma::make_desc(base + 2 * kLboNone * ks, kLboNone, kSboNone, wgmma::Swizzle::none);
  if (layout == kKSw128) return wgmma::make_desc(base + 32 * ks, 16, 1024, wgmma::Swizzle::b128);
  return wgmma::make_desc(base + 2048 * ks, uint32_t(K * 128), 1024, wgmma::Swizzle::b128);
}

enum Plant { kNone = 0, kOverwriteEarly = 1, kReadEarly = 2, kCopyLate = 3 };

// One warpgroup: a [64][K] and b [128][K] (bf16 bits, r-major) are placed in dynamic shared
// memory by their layouts, then K / 16 chained mma_async m64n128k16 in one group; out [128
// threads][64 registers]. plant: kOverwriteEarly zeroes a's stage between the commit and the wait;
// kReadEarly stores the registers before the wait; kCopyLate stages a by cp.async and waits for
// the copies only after the mma_async (a pipeline that issues before its stage has landed).
template <bool kTransA, bool kTransB>
__global__ void product_kernel(const uint16_t* a, const uint16_t* b, int K, int layout_a, int layout_b, int plant,
                               float* out) {
  MOE_DYNAMIC_SHARED(unsigned char, smem);
  const int t = int(threadIdx.x);
  const int b_base = kM * K * 2;  // 8192 for K = 64: a whole number of 1024-byte atoms
  if (plant == kCopyLate)  // 16-byte chunks: 8 consecutive k of a K-major row stay together
    for (int i = t * 8; i < kM * K; i += 128 * 8) cp_async16(smem + offset_of(layout_a, i / K, i % K, K), a + i, true);
  else
    for (int i = t; i < kM * K; i += 128) std::memcpy(smem + offset_of(layout_a, i / K, i % K, K), a + i, 2);
  cp_async_commit();
  for (int i = t; i < kN * K; i += 128) std::memcpy(smem + b_base + offset_of(layout_b, i / K, i % K, K), b + i, 2);
  wgmma::fence_proxy_async();
  __syncthreads();
  float d[kN / 2];
  for (float& v : d) v = 0.0f;
  const uint32_t sa = wgmma::smem_address(smem), sb = wgmma::smem_address(smem + b_base);
  wgmma::fence();
  for (int ks = 0; ks < K / 16; ++ks)
    wgmma::mma_async<kN, kTransA, kTransB>(d, step_desc(layout_a, sa, ks, K), step_desc(layout_b, sb, ks, K), ks > 0);
  wgmma::commit_group();
  if (plant == kOverwriteEarly) {  // the whole stage zeroed (the barrier: by every thread) before any wait
    for (int i = t; i < kM * K * 2; i += 128) smem[i] = 0;
    __syncthreads();
  }
  if (plant == kReadEarly)
    for (int i = 0; i < kN / 2; ++i) out[t * (kN / 2) + i] = d[i];
  cp_async_wait<0>();
  __syncthreads();
  wgmma::wait_group<0>();
  if (plant != kReadEarly)
    for (int i = 0; i < kN / 2; ++i) out[t * (kN / 2) + i] = d[i];
}

struct Operands {
  std::vector<float> a, b;  // [64][K], [128][K]
  std::vector<uint16_t> a_bits, b_bits;
};
// Small integers: every product and sum is exact in fp32, so one misplaced element shows.
Operands make_operands(int K) {
  Operands o;
  for (int i = 0; i < kM * K; ++i) o.a.push_back(float((i * 7) % 13 - 6));
  for (int i = 0; i < kN * K; ++i) o.b.push_back(float((i * 5) % 11 - 5));
  for (float v : o.a) o.a_bits.push_back(float_to_bf16(v).bits);
  for (float v : o.b) o.b_bits.push_back(float_to_bf16(v).bits);
  return o;
}

// out (per thread and register) through the documented map back to a [64][128] matrix.
std::vector<float> gather(const std::vector<float>& out) {
  std::vector<float> c(size_t(kM * kN), -1e30f);
  for (int t = 0; t < 128; ++t)
    for (int i = 0; i < kN / 2; ++i) c[size_t(wgmma::acc_row(t, i) * kN + wgmma::acc_col(t, i))] = out[size_t(t * 64 + i)];
  return c;
}

std::vector<double> cpu_product(const Operands& o, int K) {
  std::vector<double> c(size_t(kM * kN), 0.0);
  for (int m = 0; m < kM; ++m)
    for (int n = 0; n < kN; ++n)
      for (int k = 0; k < K; ++k) c[size_t(m * kN + n)] += double(o.a[size_t(m * K + k)]) * o.b[size_t(n * K + k)];
  return c;
}

std::vector<float> run_product(const Operands& o, int K, int layout_a, int layout_b, int plant,
                               unsigned threads = 128) {
  DeviceBuffer<uint16_t> da(o.a_bits), db(o.b_bits);
  DeviceBuffer<float> out(size_t(128 * kN / 2));
  const size_t bytes = size_t(kM + kN) * size_t(K) * 2;
  auto run = [&](auto kernel) {
    MOE_LAUNCH(kernel, 1, threads, bytes, nullptr, static_cast<const uint16_t*>(da.get()),
               static_cast<const uint16_t*>(db.get()), K, layout_a, layout_b, plant, out.get());
  };
  const bool ta = layout_a == kMnSw128, tb = layout_b == kMnSw128;
  if (ta && tb)
    run(product_kernel<true, true>);
  else if (ta)
    run(product_kernel<true, false>);
  else if (tb)
    run(product_kernel<false, true>);
  else
    run(product_kernel<false, false>);
  return out.to_host();
}

TEST(CudaWgmmaEmulation, NoSwizzleProductMatchesTheCpuExactly) {
  const Operands o = make_operands(32);
  EXPECT_TRUE(all_near(gather(run_product(o, 32, kKNone, kKNone, kNone)), cpu_product(o, 32), 0.0, 0.0));
}

TEST(CudaWgmmaEmulation, Swizzle128ProductOverFourK16StepsMatchesTheCpuExactly) {
  const Operands o = make_operands(64);
  EXPECT_TRUE(all_near(gather(run_product(o, 64, kKSw128, kKSw128, kNone)), cpu_product(o, 64), 0.0, 0.0));
}

// MN-major (transposed) operands, 128B swizzle: B alone (dx = dy w's w) and both (dw = dy^T x).
TEST(CudaWgmmaEmulation, MnMajorSwizzle128ProductsMatchTheCpuExactly) {
  const Operands o = make_operands(64);
  EXPECT_TRUE(all_near(gather(run_product(o, 64, kKSw128, kMnSw128, kNone)), cpu_product(o, 64), 0.0, 0.0));
  EXPECT_TRUE(all_near(gather(run_product(o, 64, kMnSw128, kMnSw128, kNone)), cpu_product(o, 64), 0.0, 0.0));
}

// A(m, 0) = m, A(m, 1) = 1, B(n, 0) = 1, B(n, 1) = 256 n, all else 0: D(m, n) = m + 256 n names
// its own entry, so each register of each thread must hold exactly the documented (row, col).
TEST(CudaWgmmaEmulation, EveryThreadHoldsTheDocumentedAccumulatorEntries) {
  const int K = 64;
  Operands o;
  o.a.assign(size_t(kM * K), 0.0f);
  o.b.assign(size_t(kN * K), 0.0f);
  for (int m = 0; m < kM; ++m) o.a[size_t(m * K)] = float(m), o.a[size_t(m * K + 1)] = 1.0f;
  for (int n = 0; n < kN; ++n) o.b[size_t(n * K)] = 1.0f, o.b[size_t(n * K + 1)] = float(256 * n);
  for (float v : o.a) o.a_bits.push_back(float_to_bf16(v).bits);
  for (float v : o.b) o.b_bits.push_back(float_to_bf16(v).bits);
  const std::vector<float> out = run_product(o, K, kKSw128, kKSw128, kNone);
  for (int t = 0; t < 128; ++t)
    for (int i = 0; i < kN / 2; ++i) {
      // PTX ISA, wgmma .m64nNk16 accumulator D: warp w rows 16 w + lane / 4 (+ 8 for registers
      // 2, 3 of each 4), columns 8 (i / 4) + 2 (lane % 4) + i % 2.
      const int w = t / 32, lane = t % 32;
      const int row = 16 * w + lane / 4 + 8 * ((i >> 1) & 1), col = 8 * (i / 4) + 2 * (lane % 4) + (i & 1);
      ASSERT_EQ(out[size_t(t * 64 + i)], float(row + 256 * col)) << "thread " << t << " register " << i;
    }
}

void expect_error(const std::function<void()>& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one containing: " << needle;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

// The hardware reads the operands somewhere between mma_async and wait_group: a store into them in
// that window is a race, which the emulation reports every time.
TEST(CudaWgmmaEmulation, OverwritingAnOperandBeforeTheWaitIsARaceError) {
  const Operands o = make_operands(64);
  expect_error([&] { run_product(o, 64, kKSw128, kKSw128, kOverwriteEarly); },
               "changed between the mma_async and its wait_group");
}

// The emulated copies land at the issuer's wait, so the mma_async finds its own copies into the
// operands still in flight: an error at the issue.
TEST(CudaWgmmaEmulation, AStageStillInFlightAtTheMmaAsyncIsAnError) {
  const Operands o = make_operands(64);
  expect_error([&] { run_product(o, 64, kKSw128, kKSw128, kCopyLate); }, "has not landed at its issue");
}

TEST(CudaWgmmaEmulation, ReadingAccumulatorsBeforeTheWaitSeesNoProduct) {
  const Operands o = make_operands(64);
  for (float v : run_product(o, 64, kKSw128, kKSw128, kReadEarly)) ASSERT_EQ(v, 0.0f);
}

TEST(CudaWgmmaEmulation, APartialWarpgroupIsAnError) {
  const Operands o = make_operands(64);
  expect_error([&] { run_product(o, 64, kKSw128, kKSw128, kNone, 96); }, "is not in a complete warpgroup");
}

// One warpgroup issuing a single mma_async with a descriptor the emulation refuses.
__global__ void bad_desc_kernel(int which) {
  MOE_DYNAMIC_SHARED(unsigned char, smem);
  float d[32] = {};
  const uint32_t s = wgmma::smem_address(smem);
  const uint64_t good = wgmma::make_desc(s, 16, 1024, wgmma::Swizzle::b128);
  if (which != 3) wgmma::fence();
  const uint64_t bad = which == 0   ? wgmma::make_desc(s + 16, 16, 1024, wgmma::Swizzle::b128)
                       : which == 1 ? wgmma::make_desc(s, 16, 1024, wgmma::Swizzle::b64)
                       : which == 2 ? good | uint64_t(1) << 49
                                    : good;
  wgmma::mma_async<64>(d, bad, good, false);
  wgmma::commit_group();
  wgmma::wait_group<0>();
}

TEST(CudaWgmmaEmulation, RefusedDescriptorsAndAMissingFenceAreErrors) {
  auto run = [](int which) { MOE_LAUNCH(bad_desc_kernel, 1, 128, 8192, nullptr, which); };
  expect_error([&] { run(0); }, "is misaligned for 128B swizzle");
  expect_error([&] { run(1); }, "swizzle mode 2 is not emulated");
  expect_error([&] { run(2); }, "base offset 1 is not emulated");
  expect_error([&] { run(3); }, "without a wgmma.fence");
}

}  // namespace
#endif  // MOE_CUDA_EMULATION
