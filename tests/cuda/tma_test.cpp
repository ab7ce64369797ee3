// core/cuda/tma.h end to end, on an sm_90 GPU and under the emulation alike (other GPUs skip):
// 2D and 3D TMA loads of bf16 tensors with odd dims, boxes reaching past every edge, compared
// element by element with the 128B swizzle formula the kernels' wgmma descriptors assume (chunk c
// of box row r at c ^ (r % 8), r = i2 * box[1] + i1: on the GPU this checks the hardware against
// that formula); bulk tensor stores of fp32 and bf16 boxes back to global memory, clipped at the
// edges as an H100 clips them (the same formula, the other way); a warp-specialized TMA + wgmma
// pipeline against a CPU product; and make_tensor_map_bf16's argument checks.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "core/cuda/memory.h"
#include "core/cuda/tma_selftest.h"
#include "core/error.h"
#include "tests/cuda/kernel_test_util.h"

using namespace moe;
using namespace moe::cuda;
using namespace moe::test;

namespace {

#define MOE_REQUIRE_TMA()                        \
  do {                                           \
    std::string why;                             \
    if (!tma_available(why)) GTEST_SKIP() << why; \
  } while (0)

// A distinct nonzero bit pattern per element (never 0, the out-of-range fill, nor 0xFFFF).
uint16_t pattern(uint64_t e0, uint64_t i1, uint64_t i2) {
  return uint16_t(0x3C00 + (e0 * 7 + i1 * 131 + i2 * 1031) % 0x3000);
}

struct Tensor {
  std::vector<uint64_t> dims, strides_bytes;  // innermost first; strides of dims 1..
  std::vector<uint16_t> host;
};

// A [d2][d1][d0] tensor with padded rows (and planes): the padding holds 0xABCD, never loaded.
Tensor make_tensor(std::vector<uint64_t> dims, uint64_t row_elems, uint64_t plane_rows) {
  Tensor t;
  t.dims = dims;
  const uint64_t d2 = dims.size() == 3 ? dims[2] : 1;
  t.strides_bytes.push_back(row_elems * 2);
  if (dims.size() == 3) t.strides_bytes.push_back(row_elems * plane_rows * 2);
  t.host.assign(d2 * plane_rows * row_elems, 0xABCD);
  for (uint64_t i2 = 0; i2 < d2; ++i2)
    for (uint64_t i1 = 0; i1 < dims[1]; ++i1)
      for (uint64_t e0 = 0; e0 < dims[0]; ++e0) t.host[(i2 * plane_rows + i1) * row_elems + e0] = pattern(e0, i1, i2);
  return t;
}

// Loads box at coords and compares every landed element with the formula.
void check_box(const Tensor& t, const std::vector<uint32_t>& box, const std::vector<int>& coords) {
  const int rank = int(t.dims.size());
  DeviceBuffer<uint16_t> src(t.host);
  const TensorMap map =
      make_tensor_map_bf16(src.get(), rank, t.dims.data(), t.strides_bytes.data(), box.data(), "tma_test");
  const uint32_t b2 = rank == 3 ? box[2] : 1, elements = box[0] * box[1] * b2;
  DeviceBuffer<uint16_t> out(elements);
  tma_load_box(map, rank, coords.data(), elements, out.get(), nullptr);
  const std::vector<uint16_t> got = out.to_host();
  for (uint32_t i2 = 0; i2 < b2; ++i2)
    for (uint32_t i1 = 0; i1 < box[1]; ++i1)
      for (uint32_t e0 = 0; e0 < box[0]; ++e0) {
        const int64_t g0 = coords[0] + int64_t(e0), g1 = coords[1] + int64_t(i1),
                      g2 = rank == 3 ? coords[2] + int64_t(i2) : 0;
        const bool in = g0 >= 0 && uint64_t(g0) < t.dims[0] && g1 >= 0 && uint64_t(g1) < t.dims[1] && g2 >= 0 &&
                        uint64_t(g2) < (rank == 3 ? t.dims[2] : 1);
        const uint16_t want = in ? pattern(uint64_t(g0), uint64_t(g1), uint64_t(g2)) : 0;
        const uint32_t row = i2 * box[1] + i1, at = row * 64 + ((e0 / 8) ^ (row % 8)) * 8 + e0 % 8;
        ASSERT_EQ(got[at], want) << "box element (" << e0 << ", " << i1 << ", " << i2 << ") at coords (" << coords[0]
                                 << ", " << coords[1] << (rank == 3 ? ", " + std::to_string(coords[2]) : "")
                                 << "): shared element " << at;
      }
}

// 77 x 37 in rows of 80 elements; 40-row boxes: at the origin, past the right and bottom edges,
// before the top edge, wholly outside.
TEST(CudaTma, Load2dSwizzlesAndZeroFillsOutOfRange) {
  MOE_REQUIRE_TMA();
  const Tensor t = make_tensor({77, 37}, 80, 37);
  // innermost coordinates on 16-byte boundaries (8 bf16): the hardware faults otherwise
  for (const std::vector<int>& c : std::vector<std::vector<int>>{{0, 0}, {40, -3}, {64, 30}, {16, 5}, {-64, 0}, {0, 37}})
    check_box(t, {64, 40}, c);
}

// 77 x 13 x 5 in rows of 80, planes of 15 rows; 5 x 3 boxes (15 rows: the swizzle row runs across
// planes) and 8 x 3 boxes reaching out of every dimension.
TEST(CudaTma, Load3dSwizzlesAcrossPlanesAndZeroFills) {
  MOE_REQUIRE_TMA();
  const Tensor t = make_tensor({77, 13, 5}, 80, 15);
  for (const std::vector<int>& c : std::vector<std::vector<int>>{{0, 0, 0}, {8, 9, 3}, {-8, -2, -1}, {24, 11, 4}})
    check_box(t, {64, 5, 3}, c);
  check_box(t, {64, 8, 3}, {32, 7, 2});
}

// m 100, n 120 (partial tiles: TMA zero rows), K 456: 8 slices over 3 stages (each stage's full and
// empty barriers flip parity 2-3 times), the last 8 deep. fp32 accumulation of bf16 products:
// within 1e-5 of the largest entry.
TEST(CudaTma, WarpSpecializedPipelineMatchesCpuProduct) {
  MOE_REQUIRE_TMA();
  const int m = 100, n = 120, k = 456, ks = 464;
  const std::vector<float> a = round_bf16(random_normal(size_t(m) * ks, 11)),
                           b = round_bf16(random_normal(size_t(n) * ks, 12));
  DeviceBuffer<bf16> da(to_bf16(a)), db(to_bf16(b));
  DeviceBuffer<float> dc(size_t(m) * n);
  tma_pipeline_gemm(da.get(), db.get(), m, n, k, ks, dc.get(), TmaPlant::none, nullptr);
  const std::vector<float> got = dc.to_host();
  std::vector<double> want(size_t(m) * n, 0.0);
  double largest = 0;
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      double s = 0;
      for (int q = 0; q < k; ++q) s += double(a[size_t(i) * ks + q]) * double(b[size_t(j) * ks + q]);
      want[size_t(i) * n + j] = s;
      largest = std::max(largest, std::abs(s));
    }
  EXPECT_TRUE(all_near(got, want, 1e-5 * largest, 0.0));
}

// A [rows][row_elems] tensor of 2- or 4-byte elements (dims cols x rows), filled with a sentinel;
// one 128-byte x box_rows box of distinct patterns stored at c, then every element compared: the
// box's in-range elements hold the pattern at the swizzle formula's shared slot (chunk c of box row
// r at c ^ (r % 8)), the rest (outside the box, past the edges, the row padding) the sentinel.
// In range, as an H100 measured it (2026-11-27): rows below `rows`, and columns up to the end of
// the 16-byte chunk holding column cols - 1 (the hardware clips the innermost dimension at whole
// chunks: with cols = 45 an fp32 store writes columns 45-47 of the padding, bf16 ones 45-47 too).
// Every wrong element is counted, and the first few named, so that one run tells what the
// hardware wrote where.
template <class W>
void check_store(uint64_t cols, uint64_t rows, uint64_t row_elems, uint32_t box_rows, std::vector<int> c) {
  constexpr uint32_t kBoxCols = 128 / sizeof(W);
  const W sentinel = W(0x5A5A5A5Au);
  DeviceBuffer<W> dst(std::vector<W>(rows * row_elems, sentinel));
  const uint64_t dims[2] = {cols, rows}, strides[1] = {row_elems * sizeof(W)};
  const uint32_t box[2] = {kBoxCols, box_rows};
  const TensorMap map = make_tensor_map(dst.get(), int(sizeof(W)), 2, dims, strides, box, "tma_test");
  std::vector<W> image(size_t(kBoxCols) * box_rows);
  auto value = [](uint32_t e, uint32_t r) { return W(1 + e * 7 + r * 131); };
  for (uint32_t r = 0; r < box_rows; ++r)
    for (uint32_t e = 0; e < kBoxCols; ++e) {
      const uint32_t byte = e * uint32_t(sizeof(W));
      image[(r * 128 + ((byte / 16) ^ (r % 8)) * 16 + byte % 16) / sizeof(W)] = value(e, r);
    }
  std::vector<uint32_t> words(image.size() * sizeof(W) / 4);
  std::memcpy(words.data(), image.data(), words.size() * 4);
  DeviceBuffer<uint32_t> dimage(words);
  tma_store_box(map, c.data(), dimage.get(), uint32_t(words.size() * 4), nullptr);
  const std::vector<W> got = dst.to_host();
  size_t wrong = 0;
  std::string first;
  const uint64_t written_cols = (cols * sizeof(W) + 15) / 16 * 16 / sizeof(W);
  for (uint64_t r = 0; r < rows; ++r)
    for (uint64_t e = 0; e < row_elems; ++e) {
      const int64_t be = int64_t(e) - c[0], br = int64_t(r) - c[1];
      const bool in = e < written_cols && be >= 0 && be < int64_t(kBoxCols) && br >= 0 && br < int64_t(box_rows);
      const W want = in ? value(uint32_t(be), uint32_t(br)) : sentinel;
      if (got[r * row_elems + e] == want) continue;
      if (++wrong <= 8)
        first += " (" + std::to_string(e) + ", " + std::to_string(r) + "): " + std::to_string(got[r * row_elems + e]) +
                 (in ? " for the box's element" : " outside the box or the tensor") + ";";
    }
  EXPECT_EQ(wrong, 0u) << sizeof(W) * 8 << "-bit elements, " << cols << " x " << rows << " in rows of " << row_elems
                       << ", a store at (" << c[0] << ", " << c[1] << "); the first wrong elements:" << first;
}

// fp32 (32-element boxes) and bf16 (64) into 44 / 40 / 45 / 41 x 29 tensors in padded rows: inside,
// past the bottom edge, past a right edge on a 16-byte boundary and one inside a chunk (45 columns:
// the chunk is written whole). One case per test: a fault poisons the process's CUDA context, so
// the GPU run of one case must not hide the others'.
TEST(CudaTma, Store2dInside) {
  MOE_REQUIRE_TMA();
  check_store<uint32_t>(44, 29, 48, 16, {0, 0});
  check_store<uint32_t>(44, 29, 48, 16, {8, 5});
  check_store<uint16_t>(45, 29, 56, 16, {0, 0});  // bf16 columns 45-47: the last chunk, written whole
}
TEST(CudaTma, Store2dClipsPastTheBottomEdge) {
  MOE_REQUIRE_TMA();
  check_store<uint32_t>(44, 29, 48, 16, {0, 20});
  check_store<uint16_t>(40, 29, 56, 16, {0, 20});
}
TEST(CudaTma, Store2dClipsPastARightEdgeOn16Bytes) {
  MOE_REQUIRE_TMA();
  check_store<uint32_t>(44, 29, 48, 16, {24, 3});
  check_store<uint16_t>(40, 29, 56, 16, {16, 3});
}
TEST(CudaTma, Store2dWritesTheLast16ByteChunkWhole) {
  MOE_REQUIRE_TMA();
  check_store<uint32_t>(45, 29, 48, 16, {24, 20});
  check_store<uint16_t>(45, 29, 56, 16, {16, 20});
  check_store<uint32_t>(41, 29, 48, 16, {40, 0});  // one column in range, three of padding written
}

// A store at a negative coordinate faults an H100 ("an illegal instruction was encountered",
// 2026-11-27), which poisons the process's context: checked under the emulation only, where it is
// one line at the issue (emulation_tma_test.cpp, StoreMisuseIsOneLine; loads may start there).
TEST(CudaTma, Store2dAtANegativeCoordinateIsRefused) {
  MOE_REQUIRE_TMA();
#ifdef MOE_CUDA_EMULATION
  for (const std::vector<int>& c : std::vector<std::vector<int>>{{0, -5}, {-4, 0}})
    EXPECT_THROW(check_store<uint32_t>(44, 29, 48, 16, c), Error) << c[0] << ", " << c[1];
#else
  GTEST_SKIP() << "faults the GPU (illegal instruction) and poisons the context: checked under the emulation";
#endif
}

TEST(CudaTma, MakeTensorMapNamesTheBadArgument) {
  DeviceBuffer<uint16_t> buf(4096);
  const uint64_t dims[3] = {64, 16, 2}, strides[2] = {128, 2048}, odd_stride[2] = {120, 2048};
  const uint32_t box[3] = {64, 8, 2}, narrow[3] = {32, 8, 2}, tall[3] = {64, 300, 2};
  auto fails_with = [&](const std::string& what, auto&& make) {
    try {
      make();
      ADD_FAILURE() << "expected a failure naming " << what;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("my_op"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  fails_with("rank 4", [&] { make_tensor_map_bf16(buf.get(), 4, dims, strides, box, "my_op"); });
  fails_with("box[0] = 32", [&] { make_tensor_map_bf16(buf.get(), 3, dims, strides, narrow, "my_op"); });
  fails_with("box[1] = 300", [&] { make_tensor_map_bf16(buf.get(), 3, dims, strides, tall, "my_op"); });
  fails_with("strides_bytes[0] = 120", [&] { make_tensor_map_bf16(buf.get(), 3, dims, odd_stride, box, "my_op"); });
  fails_with("16-byte aligned", [&] { make_tensor_map_bf16(buf.get() + 1, 3, dims, strides, box, "my_op"); });
}

}  // namespace
