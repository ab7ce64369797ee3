// Tests of the emulated mma.sync m16n8k16 and ldmatrix (core/cuda/mma.h): matrices scattered into
// lanes by the documented fragment maps multiply to the CPU product, ldmatrix hands each lane the
// entries the maps name, and a partial warp or a misaligned row is an error naming the op.
#ifdef MOE_CUDA_EMULATION
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "core/cuda/launch.h"
#include "core/cuda/memory.h"
#include "core/cuda/mma.h"
#include "core/error.h"
#include "tests/cuda/kernel_test_util.h"

using namespace moe;
using namespace moe::cuda;
using namespace moe::test;

namespace {

uint16_t bits_of(float x) { return float_to_bf16(x).bits; }

// a: 16 x 16 row-major, b: 16 x 8 row-major ([k][n]), c and d: 16 x 8 row-major, all fp32 with
// bf16-exact values for a and b. Each lane gathers its registers through the maps.
__global__ void mma_kernel(const float* a, const float* b, const float* c, float* d) {
  const int lane = threadIdx.x % 32;
  uint32_t ra[4], rb[2];
  float rc[4], rd[4];
  for (int i = 0; i < 4; ++i)
    ra[i] = mma::pack_bf16x2(a[mma::a_row(lane, i) * 16 + mma::a_col(lane, i, 0)],
                             a[mma::a_row(lane, i) * 16 + mma::a_col(lane, i, 1)]);
  for (int i = 0; i < 2; ++i)
    rb[i] = mma::pack_bf16x2(b[mma::b_row(lane, i, 0) * 8 + mma::b_col(lane)],
                             b[mma::b_row(lane, i, 1) * 8 + mma::b_col(lane)]);
  for (int i = 0; i < 4; ++i) rc[i] = c[mma::c_row(lane, i) * 8 + mma::c_col(lane, i)];
  mma::mma_bf16_16816(rd, ra, rb, rc);
  for (int i = 0; i < 4; ++i) d[mma::c_row(lane, i) * 8 + mma::c_col(lane, i)] = rd[i];
}

TEST(CudaEmulationMma, ProductOfScatteredFragmentsMatchesTheCpu) {
  // Distinct small integers: every product and sum is exact in fp32, so a swapped index shows.
  std::vector<float> a(256), b(128), c(128);
  for (int i = 0; i < 256; ++i) a[size_t(i)] = float((i * 7) % 23 - 11);
  for (int i = 0; i < 128; ++i) b[size_t(i)] = float((i * 5) % 19 - 9), c[size_t(i)] = float(i % 13) * 0.5f;
  DeviceBuffer<float> da(a), db(b), dc(c), dd(128);
  MOE_LAUNCH(mma_kernel, 1, 32, 0, nullptr, static_cast<const float*>(da.get()), static_cast<const float*>(db.get()),
             static_cast<const float*>(dc.get()), dd.get());
  std::vector<double> want(128);
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 8; ++j) {
      double s = c[size_t(i * 8 + j)];
      for (int k = 0; k < 16; ++k) s += double(a[size_t(i * 16 + k)]) * b[size_t(k * 8 + j)];
      want[size_t(i * 8 + j)] = s;
    }
  EXPECT_TRUE(all_near(dd.to_host(), want, 0.0, 0.0));
}

TEST(CudaEmulationMma, PartialWarpIsAnErrorNamingTheOp) {
  DeviceBuffer<float> a(256), b(128), c(128), d(128);
  try {
    MOE_LAUNCH(mma_kernel, 1, 16, 0, nullptr, static_cast<const float*>(a.get()), static_cast<const float*>(b.get()),
               static_cast<const float*>(c.get()), d.get());
    ADD_FAILURE() << "a 16-thread warp ran mma.sync";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("mma.sync.m16n8k16 needs all 32 lanes"), std::string::npos) << e.what();
  }
}

// A 16 x 16 bf16 tile with rows `ld` apart in shared memory; lane l points at row (l & 7) +
// 8 ((l >> 3) & 1), column 8 (l >> 4) (+ `skew` elements to misalign). Writes every lane's 4
// registers for the plain and the transposed load.
constexpr int kLd = 24;
__global__ void ldmatrix_kernel(const uint16_t* tile, uint32_t* plain, uint32_t* trans, int skew) {
  MOE_SHARED(uint16_t, s, [16 * kLd]);
  const int lane = threadIdx.x % 32;
  for (int i = lane; i < 16 * kLd; i += 32) s[i] = tile[i];
  __syncwarp();
  const uint16_t* row = s + ((lane & 7) + 8 * ((lane >> 3) & 1)) * kLd + 8 * (lane >> 4) + skew;
  uint32_t r[4];
  mma::ldmatrix_x4(r, row);
  for (int i = 0; i < 4; ++i) plain[lane * 4 + i] = r[i];
  mma::ldmatrix_x4_trans(r, row);
  for (int i = 0; i < 4; ++i) trans[lane * 4 + i] = r[i];
}

TEST(CudaEmulationMma, LdmatrixHandsOutTheDocumentedFragments) {
  std::vector<uint16_t> tile(16 * kLd);
  for (int i = 0; i < 16 * kLd; ++i) tile[size_t(i)] = bits_of(float(i % kLd < 16 ? (i / kLd) * 16 + i % kLd : -1));
  DeviceBuffer<uint16_t> dt(tile);
  DeviceBuffer<uint32_t> plain(128), trans(128);
  MOE_LAUNCH(ldmatrix_kernel, 1, 32, 0, nullptr, static_cast<const uint16_t*>(dt.get()), plain.get(), trans.get(), 0);
  const auto p = plain.to_host(), t = trans.to_host();
  auto at = [&](int r, int c) { return uint32_t(tile[size_t(r * kLd + c)]); };
  for (int lane = 0; lane < 32; ++lane)
    for (int i = 0; i < 4; ++i) {
      // These addresses make the plain load an A fragment of the tile (the mma table)...
      const uint32_t a = at(mma::a_row(lane, i), mma::a_col(lane, i, 0)) | at(mma::a_row(lane, i), mma::a_col(lane, i, 1)) << 16;
      EXPECT_EQ(p[size_t(lane * 4 + i)], a) << "lane " << lane << " register " << i;
      // ...and the transposed load: matrix i (rows 8 (i & 1), columns 8 (i >> 1)) read by columns.
      const int r0 = 8 * (i & 1), c0 = 8 * (i >> 1), g = lane >> 2, q = lane & 3;
      const uint32_t tr = at(r0 + 2 * q, c0 + g) | at(r0 + 2 * q + 1, c0 + g) << 16;
      EXPECT_EQ(t[size_t(lane * 4 + i)], tr) << "lane " << lane << " register " << i << " (.trans)";
    }
  try {
    MOE_LAUNCH(ldmatrix_kernel, 1, 32, 0, nullptr, static_cast<const uint16_t*>(dt.get()), plain.get(), trans.get(), 1);
    ADD_FAILURE() << "a misaligned ldmatrix row ran";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not 16-byte aligned"), std::string::npos) << e.what();
  }
}

}  // namespace
#endif  // MOE_CUDA_EMULATION
