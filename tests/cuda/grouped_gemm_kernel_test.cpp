// Tensor-core grouped GEMM against the CPU: the SwiGLU experts of layers/moe/experts in double
// (forward, and the input and weight gradients of its autograd backward) on ragged expert groups
// (an empty expert, one of a single row, one spanning two row tiles) and odd model sizes; and the
// three GEMM forms on their own (fp32 and bf16 output, with and without accumulation), on odd
// sizes (the element-load fallback), multiples of 8 (the cp.async path) and a misaligned base.
#include <gtest/gtest.h>

#include <cstring>
#include <numeric>
#include <string>
#include <type_traits>

#ifdef MOE_CUDA_EMULATION
#include "core/cuda/emulation.h"
#endif
#include "core/cuda/grouped_gemm.h"
#include "core/cuda/grouped_gemm_sm90.h"
#include "core/cuda/memory.h"
#include "core/error.h"
#include "core/ops.h"
#include "layers/moe/experts.h"
#include "tests/cuda/kernel_test_util.h"
#include "tests/env_scope.h"

using namespace moe;
using namespace moe::cuda;
using namespace moe::test;

namespace {

std::vector<int64_t> offsets_of(const std::vector<int64_t>& sizes) {
  std::vector<int64_t> off(sizes.size() + 1, 0);
  std::partial_sum(sizes.begin(), sizes.end(), off.begin() + 1);
  return off;
}
std::vector<int32_t> to_i32(const std::vector<int64_t>& v) { return std::vector<int32_t>(v.begin(), v.end()); }

double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::abs(x));
  return m;
}

// bf16 operands and bf16 intermediates (h1, h3, h) against the unrounded double pipeline: each
// rounding is a relative 2^-9, so errors are measured relative to the tensor's largest entry.
::testing::AssertionResult near_bf16(const std::vector<float>& got, const std::vector<double>& want, double rel) {
  return all_near(got, want, rel * max_abs(want), rel);
}

TEST(CudaGroupedGemm, SwigluExpertsMatchCpuForwardAndBackward) {
  const std::vector<int64_t> sizes = {70, 3, 0, 29, 1};  // 103 rows
  const int E = int(sizes.size());
  const long D = 40, H = 24, N = 103;
  const auto off = offsets_of(sizes);
  auto x = round_bf16(random_normal(static_cast<size_t>(N * D), 91));
  auto w1 = round_bf16(random_normal(static_cast<size_t>(E * H * D), 92, 0.15f)),
       w3 = round_bf16(random_normal(static_cast<size_t>(E * H * D), 93, 0.15f));
  auto w2 = round_bf16(random_normal(static_cast<size_t>(E * D * H), 94, 0.2f));
  auto dy = round_bf16(random_normal(static_cast<size_t>(N * D), 95));

  Philox rng;
  Experts experts(E, D, H, 0.02, 0.02, rng, DType::f64);
  auto f64 = [](const std::vector<float>& v, const Shape& s) {
    return Tensor::from_vector<double>(std::vector<double>(v.begin(), v.end()), s);
  };
  Tensor(experts.w1()).copy_(f64(w1, {E, H, D}));
  Tensor(experts.w3()).copy_(f64(w3, {E, H, D}));
  Tensor(experts.w2()).copy_(f64(w2, {E, D, H}));
  Tensor xs = f64(x, {N, D});
  xs.set_requires_grad(true);
  Tensor y = experts.forward(xs, off);
  y.backward(f64(dy, {N, D}));

  DeviceBuffer<bf16> dx_in = upload<bf16>(x), dw1 = upload<bf16>(w1), dw3 = upload<bf16>(w3), dw2 = upload<bf16>(w2),
                     ddy = upload<bf16>(dy), h1(static_cast<size_t>(N * H)), h3(static_cast<size_t>(N * H)),
                     h(static_cast<size_t>(N * H)), dy_out(static_cast<size_t>(N * D)), dx(static_cast<size_t>(N * D));
  DeviceBuffer<int32_t> doff(to_i32(off));
  DeviceBuffer<float> g1(static_cast<size_t>(E * H * D)), g3(static_cast<size_t>(E * H * D)),
      g2(static_cast<size_t>(E * D * H));
  experts_forward(dx_in.get(), dw1.get(), dw3.get(), dw2.get(), doff.get(), E, N, D, H, h1.get(), h3.get(), h.get(),
                  dy_out.get());
  experts_backward(dx_in.get(), dw1.get(), dw3.get(), dw2.get(), doff.get(), E, N, D, H, h1.get(), h3.get(), h.get(),
                   ddy.get(), dx.get(), g1.get(), g3.get(), g2.get());
  EXPECT_TRUE(near_bf16(to_f32(dy_out.to_host()), y.to_double_vector(), 1e-2)) << "y";
  EXPECT_TRUE(near_bf16(to_f32(dx.to_host()), xs.grad().to_double_vector(), 1e-2)) << "dx";
  EXPECT_TRUE(near_bf16(g1.to_host(), experts.w1().grad().to_double_vector(), 1e-2)) << "dw1";
  EXPECT_TRUE(near_bf16(g3.to_host(), experts.w3().grad().to_double_vector(), 1e-2)) << "dw3";
  EXPECT_TRUE(near_bf16(g2.to_host(), experts.w2().grad().to_double_vector(), 1e-2)) << "dw2";
  auto g = g1.to_host();
  for (long i = 2 * H * D; i < 3 * H * D; ++i) ASSERT_EQ(g[static_cast<size_t>(i)], 0.0f) << "expert 2 has no rows";
}

// The three forms on their own against double loops over the same bf16 operands. Each case sets
// the output's dtype, `accumulate` (the outputs start as random values that are either kept and
// added to, or must be overwritten), the expert group sizes (empty experts, 1-row experts, a
// group spanning two 128-row tiles) and shift_a: x starts one element past a 16-byte boundary, so
// its copies fall back to element loads while the other operands use cp.async (mixed in one stage).
// fp32 out: only the summation order differs from the double loops: |err| <= 1e-5 (1 + max |want|)
// + 1e-5 |want|. bf16 out: one rounding of the fp32 result (2^-9 relative): 5e-3 of the largest
// entry + 5e-3 |want|.
struct FormsCase {
  long M, K;
  std::vector<int64_t> sizes;
  bool accumulate;
  bool shift_a = false;
};

template <class T>
std::vector<float> host_f32(const DeviceBuffer<T>& b) {
  return to_f32(b.to_host());
}

// The outputs of nt, nn and tn (y, dx, gw) as the device left them.
template <class Tout>
struct FormsOutputs {
  std::vector<Tout> y, dx, gw;
};

// Runs the three forms on fc, checks them against the CPU, and returns them.
template <class Tout>
FormsOutputs<Tout> check_forms(const FormsCase& fc) {
  const long M = fc.M, K = fc.K;
  const auto off = offsets_of(fc.sizes);
  const int E = int(fc.sizes.size());
  const long N = off.back();
  const size_t shift = fc.shift_a ? 1 : 0;
  auto a_host = round_bf16(random_normal(static_cast<size_t>(N * K) + shift, 96));
  auto w = round_bf16(random_normal(static_cast<size_t>(E * M * K), 97));
  auto g = round_bf16(random_normal(static_cast<size_t>(N * M), 98));
  auto base_y = round_bf16(random_normal(static_cast<size_t>(N * M), 99)),
       base_dx = round_bf16(random_normal(static_cast<size_t>(N * K), 100)),
       base_gw = round_bf16(random_normal(static_cast<size_t>(E * M * K), 101));
  const float* a = a_host.data() + shift;
  DeviceBuffer<bf16> da = upload<bf16>(a_host), dw = upload<bf16>(w), dg = upload<bf16>(g);
  DeviceBuffer<int32_t> doff(to_i32(off));
  DeviceBuffer<Tout> y = upload<Tout>(base_y), dx = upload<Tout>(base_dx), gw = upload<Tout>(base_gw);
  const bf16* x = da.get() + shift;
  grouped_gemm_nt(x, dw.get(), doff.get(), E, N, M, K, y.get(), fc.accumulate);
  grouped_gemm_nn(dg.get(), dw.get(), doff.get(), E, N, M, K, dx.get(), fc.accumulate);
  grouped_gemm_tn(dg.get(), x, doff.get(), E, N, M, K, gw.get(), fc.accumulate);

  const double keep = fc.accumulate ? 1.0 : 0.0;
  std::vector<double> wy(static_cast<size_t>(N * M)), wdx(static_cast<size_t>(N * K)),
      wgw(static_cast<size_t>(E * M * K));
  for (size_t i = 0; i < wy.size(); ++i) wy[i] = keep * base_y[i];
  for (size_t i = 0; i < wdx.size(); ++i) wdx[i] = keep * base_dx[i];
  for (size_t i = 0; i < wgw.size(); ++i) wgw[i] = keep * base_gw[i];
  for (int e = 0; e < E; ++e)
    for (long r = off[static_cast<size_t>(e)]; r < off[static_cast<size_t>(e) + 1]; ++r)
      for (long m = 0; m < M; ++m) {
        const size_t rm = static_cast<size_t>(r * M + m);
        for (long k = 0; k < K; ++k) {
          const size_t rk = static_cast<size_t>(r * K + k), mk = static_cast<size_t>((e * M + m) * K + k);
          wy[rm] += double(a[rk]) * w[mk];
          wdx[rk] += double(g[rm]) * w[mk];
          wgw[mk] += double(g[rm]) * a[rk];
        }
      }
  const bool is_f32 = std::is_same_v<Tout, float>;
  auto near = [&](const std::vector<float>& got, const std::vector<double>& want) {
    return is_f32 ? all_near(got, want, 1e-5 * (1.0 + max_abs(want)), 1e-5)
                  : all_near(got, want, 5e-3 * max_abs(want), 5e-3);
  };
  EXPECT_TRUE(near(host_f32(y), wy)) << "nt";
  EXPECT_TRUE(near(host_f32(dx), wdx)) << "nn";
  EXPECT_TRUE(near(host_f32(gw), wgw)) << "tn";
  return {y.to_host(), dx.to_host(), gw.to_host()};
}

// 37 experts of 0 .. 40 rows, a third of them empty.
std::vector<int64_t> many_small_and_empty_sizes() {
  std::vector<int64_t> sizes;
  for (int e = 0; e < 37; ++e) sizes.push_back(e % 3 == 1 ? 0 : (e * 17) % 41);
  return sizes;
}

// Odd M and K: every operand and output takes the element path (no 16-byte alignment); the nn
// reduction (M = 101: 4 slices) and the tn one (130 rows: 5) run past the 4-stage prologue.
TEST(CudaGroupedGemm, UnalignedSizesFp32AccumulateAndBf16Overwrite) {
  GroupedGemmKernelScope mma("mma");  // these form tests are the mma kernel's (sm_90 defaults to wgmma2)
  const std::vector<int64_t> sizes = {0, 130, 17, 0, 1};
  check_forms<float>({101, 33, sizes, true});
  check_forms<bf16>({101, 33, sizes, false});
  EXPECT_THROW(grouped_gemm_nt<float>(nullptr, nullptr, nullptr, 0, 1, 1, 1, nullptr), Error);
}

// Multiples of 8: the cp.async path with zero-filled ragged edges (K = 104: 4 slices, the last a
// quarter full; M = 136: a second column tile of 8 and 5 slices in nn; 161 rows: 6 in tn), 16-byte
// output stores, skewed groups.
const std::vector<int64_t> kSkewedSizes = {161, 0, 6, 24};
TEST(CudaGroupedGemm, AlignedSizesUseTheAsyncCopyPathFp32Overwrite) {
  GroupedGemmKernelScope mma("mma");
  check_forms<float>({136, 104, kSkewedSizes, false});
}
TEST(CudaGroupedGemm, AlignedSizesUseTheAsyncCopyPathBf16Accumulate) {
  GroupedGemmKernelScope mma("mma");
  check_forms<bf16>({136, 104, kSkewedSizes, true});
}

// x one element off its 16-byte boundary: its copies (nt's A, tn's B) fall back per element while
// the other operand of the same stage goes through cp.async.
TEST(CudaGroupedGemm, MisalignedBaseMixesBothLoadPaths) {
  GroupedGemmKernelScope mma("mma");
  check_forms<float>({40, 72, {3, 0, 45}, true, /*shift_a=*/true});
}

// MOE_GROUPED_GEMM=wgmma for the scope: the three forms run on the Hopper wgmma kernels
// (grouped_gemm_sm90.cu) wherever their operands allow 16-byte copies, else on the mma kernel.
// Under the emulation always; on a GPU only an sm_90 device runs the kernels (others skip).
bool wgmma_available(std::string& why) {
  GroupedGemmKernelScope scope("wgmma");
  try {
    return grouped_gemm_uses_wgmma();
  } catch (const Error& e) {
    why = e.what();
    return false;
  }
}

#define MOE_REQUIRE_WGMMA()                                   \
  do {                                                        \
    std::string why;                                          \
    if (!wgmma_available(why)) GTEST_SKIP() << why;           \
  } while (0)

// nt, nn and tn on wgmma. K = 328: nt's 6 slices of 64, past the 3-slice prologue of the 5-stage
// pipeline, the last an eighth full; M = 136: a second column tile of 8 columns for nt, nn's 3
// slices; skewed groups (161 rows: two row tiles of one expert and tn's 3 slices, an empty expert
// (tn writes zeros), 6 and 24 rows). The same tolerances as the mma kernel's.
TEST(CudaGroupedGemmSm90, WgmmaForwardSkewedGroupsFp32Overwrite) {
  MOE_REQUIRE_WGMMA();
  GroupedGemmKernelScope scope("wgmma");
  check_forms<float>({136, 328, kSkewedSizes, false});
}
TEST(CudaGroupedGemmSm90, WgmmaForwardSkewedGroupsBf16Accumulate) {
  MOE_REQUIRE_WGMMA();
  GroupedGemmKernelScope scope("wgmma");
  check_forms<bf16>({136, 104, kSkewedSizes, true});
}
// Odd M (101: nt's single-element stores and ragged column tile; nn and tn, whose dy rows are then
// not 16-byte multiples, fall back to the mma kernel), a 1-row expert, empty experts first and
// last, K = 72 (two slices, the second an eighth full).
TEST(CudaGroupedGemmSm90, WgmmaForwardOddOutputWidthAndOneRowExpert) {
  MOE_REQUIRE_WGMMA();
  GroupedGemmKernelScope scope("wgmma");
  check_forms<float>({101, 72, {0, 130, 17, 1, 0}, true});
}
// Where x is off its 16-byte boundary (nt, tn) or K is not a multiple of 8 (all three), the wgmma
// kernels' whole-chunk copies do not apply and those forms fall back to the mma kernel; nn with an
// aligned dy and w runs on wgmma beside them.
TEST(CudaGroupedGemmSm90, WgmmaForwardSkipsToTheMmaKernelWhenCopiesCannotBeWhole) {
  MOE_REQUIRE_WGMMA();
  GroupedGemmKernelScope scope("wgmma");
  check_forms<float>({40, 72, {3, 0, 45}, true, /*shift_a=*/true});  // x misaligned: the mma kernel
  check_forms<bf16>({24, 33, {5, 9}, false});                        // K odd: the mma kernel
}

// 37 experts of 0 .. 40 rows (a third of them empty, most groups shorter than a tile): every row
// tile finds its expert by the kernel's binary lifting over tile_starts; tn writes zeros for the
// empty experts.
TEST(CudaGroupedGemmSm90, WgmmaManySmallAndEmptyExperts) {
  MOE_REQUIRE_WGMMA();
  GroupedGemmKernelScope scope("wgmma");
  const std::vector<int64_t> sizes = many_small_and_empty_sizes();
  check_forms<float>({24, 40, sizes, false});
}

// MOE_GROUPED_GEMM=wgmma2: the 3-stage pipeline (2 blocks per SM; prefetch distance 1) over 6
// slices of nt, 3 of nn and tn.
TEST(CudaGroupedGemmSm90, Wgmma2ThreeStagePipelineSkewedGroups) {
  MOE_REQUIRE_WGMMA();
  GroupedGemmKernelScope scope("wgmma2");
  check_forms<bf16>({136, 328, kSkewedSizes, true});
}

// MOE_GROUPED_GEMM=wgmma3: persistent blocks (3 under the emulation) over 128 x 256 tiles, one
// cp.async stream across each block's tiles. The wgmma cases again: K = 328 (nt: 6 slices past the
// 2-slice lead of the 4-stage pipeline, the last an eighth full), M = 136 (nt: one column tile of
// 136 of 256 columns; nn: 3 slices, K's 328 columns in a full and a 72-wide tile; tn: 2 x 2 tiles
// per expert), skewed groups (nt / nn: 4 row tiles over 3 blocks, so block 0 streams from its
// first tile into its second; tn: the empty expert's tiles have no slices and sit between tiles
// that do). The same tolerances as the mma kernel's.
// MOE_GROUPED_GEMM=`kernel` for the scope; under the emulation, launches are also checked against
// sm_90's shared-memory limit (wgmma3's and wgmma4's ~193 KiB exist only there; the default target
// is sm_80).
struct Sm90KernelScope {
  explicit Sm90KernelScope(const char* name) : kernel(name) {}
  GroupedGemmKernelScope kernel;
#ifdef MOE_CUDA_EMULATION
  int previous_target = emu::set_target_sm(90);
  ~Sm90KernelScope() { emu::set_target_sm(previous_target); }
#endif
};
struct Wgmma3Scope : Sm90KernelScope {
  Wgmma3Scope() : Sm90KernelScope("wgmma3") {}
};

TEST(CudaGroupedGemmSm90, Wgmma3PersistentSkewedGroupsFp32Overwrite) {
  MOE_REQUIRE_WGMMA();
  Wgmma3Scope scope;
  check_forms<float>({136, 328, kSkewedSizes, false});
}
TEST(CudaGroupedGemmSm90, Wgmma3PersistentSkewedGroupsBf16Accumulate) {
  MOE_REQUIRE_WGMMA();
  Wgmma3Scope scope;
  check_forms<bf16>({136, 104, kSkewedSizes, true});
}
// Wider than one tile: M = 264 (nt: a full 256-column tile and an 8-wide one, so the column tiles
// of one row tile go to different blocks; tn: 3 row tiles of M), K = 40 (nt: a single slice per
// tile, each tile's slices copied while the previous tile's products run), empty experts first
// and last, a 1-row expert.
TEST(CudaGroupedGemmSm90, Wgmma3PersistentTwoColumnTilesAndOneSliceTiles) {
  MOE_REQUIRE_WGMMA();
  Wgmma3Scope scope;
  check_forms<float>({264, 40, {0, 130, 1, 17, 0}, true});
}
// Odd M (101): nt's single-element stores and ragged column tile; nn and tn fall back to the mma
// kernel (dy's rows are not 16-byte multiples).
TEST(CudaGroupedGemmSm90, Wgmma3PersistentOddOutputWidthAndOneRowExpert) {
  MOE_REQUIRE_WGMMA();
  Wgmma3Scope scope;
  check_forms<float>({101, 72, {0, 130, 17, 1, 0}, true});
}
TEST(CudaGroupedGemmSm90, Wgmma3PersistentSkipsToTheMmaKernelWhenCopiesCannotBeWhole) {
  MOE_REQUIRE_WGMMA();
  Wgmma3Scope scope;
  check_forms<float>({40, 72, {3, 0, 45}, true, /*shift_a=*/true});  // x misaligned: the mma kernel
  check_forms<bf16>({24, 33, {5, 9}, false});                        // K odd: the mma kernel
}
// 37 experts of 0 .. 40 rows: many short tiles per block; tn's empty experts give tiles without
// slices (zeros written) between tiles with one slice, over the stream of each block.
TEST(CudaGroupedGemmSm90, Wgmma3PersistentManySmallAndEmptyExperts) {
  MOE_REQUIRE_WGMMA();
  Wgmma3Scope scope;
  const std::vector<int64_t> sizes = many_small_and_empty_sizes();
  check_forms<float>({24, 40, sizes, false});
  check_forms<bf16>({24, 40, sizes, true});
}

// MOE_GROUPED_GEMM=wgmma4: persistent blocks (2 under the emulation) over 128 x 256 tiles, TMA
// copies issued by a producer warpgroup into a 4-stage mbarrier pipeline, two consumer warpgroups
// (grouped_gemm_sm90_tma.cu). The cases of wgmma3 again, for what differs here:
//  * K = 328 (nt: 6 slices, so the stages are reused, the producer waiting on their "empty"
//    barriers), M = 136 (nt: the B box's 256 rows past w_e's 136 read as zeros through the 3D map,
//    not as the next expert's; nn: 3 slices, the last an eighth of the reduction; tn: 2 x 2 tiles);
//  * tn's partial last slices, loaded ending at the expert's last row with the rows before it
//    zeroed in shared memory: 161 rows (3 slices, the last of 33 rows, 31 of them the expert's
//    own previous slice's), then experts of 6 and 24 rows (all of their one slice comes from
//    earlier experts' rows but 6 / 24), and in the many-experts case a first expert of 34 rows
//    (its box starts at row -30: zeros);
//  * block 0 claims nearly every tile: tiles with no slices (tn's empty experts) between tiles with
//    one, the tile ring (4 slots) and the stage ring (4) wrapping many times over.
// The same tolerances as the mma kernel's.
struct Wgmma4Scope : Sm90KernelScope {
  Wgmma4Scope() : Sm90KernelScope("wgmma4") {}
};

TEST(CudaGroupedGemmSm90, Wgmma4TmaSkewedGroupsFp32Overwrite) {
  MOE_REQUIRE_WGMMA();
  Wgmma4Scope scope;
  check_forms<float>({136, 328, kSkewedSizes, false});
}
TEST(CudaGroupedGemmSm90, Wgmma4TmaSkewedGroupsBf16Accumulate) {
  MOE_REQUIRE_WGMMA();
  Wgmma4Scope scope;
  check_forms<bf16>({136, 104, kSkewedSizes, true});
}
// M = 264 (nt: a full 256-column tile and an 8-wide one; tn: 3 row tiles of M, nn: 5 slices),
// K = 40 (nt: one slice per tile, so the producer runs tiles ahead of the consumers' stores),
// empty experts first and last, a 1-row expert (tn: its slice is 63 zeroed rows and its own).
TEST(CudaGroupedGemmSm90, Wgmma4TmaTwoColumnTilesAndOneSliceTiles) {
  MOE_REQUIRE_WGMMA();
  Wgmma4Scope scope;
  check_forms<float>({264, 40, {0, 130, 1, 17, 0}, true});
}
// The epilogue: outputs whose rows allow 16-byte accesses go through each consumer warp's shared
// staging (the cases above); MOE_WGMMA4_DIRECT_STORES=1 stores from the registers as the other
// wgmma kernels do (the GPU compares the two): the same products either way.
TEST(CudaGroupedGemmSm90, Wgmma4TmaDirectStoresFromRegisters) {
  MOE_REQUIRE_WGMMA();
  Wgmma4Scope scope;
  EnvScope direct("MOE_WGMMA4_DIRECT_STORES", "1");
  check_forms<bf16>({136, 104, kSkewedSizes, true});
}
// Odd M (101): nt's single-element direct stores and ragged column tile; nn and tn fall back to
// the mma kernel (dy's rows are not 16-byte multiples, which a tensor map cannot stride either).
TEST(CudaGroupedGemmSm90, Wgmma4TmaOddOutputWidthAndOneRowExpert) {
  MOE_REQUIRE_WGMMA();
  Wgmma4Scope scope;
  check_forms<float>({101, 72, {0, 130, 17, 1, 0}, true});
}
TEST(CudaGroupedGemmSm90, Wgmma4TmaManySmallAndEmptyExperts) {
  MOE_REQUIRE_WGMMA();
  Wgmma4Scope scope;
  const std::vector<int64_t> sizes = many_small_and_empty_sizes();
  check_forms<bf16>({24, 40, sizes, true});
}

// MOE_WGMMA4_TMA_STORES=1: an overwrite's epilogue by bulk tensor stores of each warp's staged
// boxes (store_rows_tma), bit for bit the staged epilogue's values, since both convert the same
// accumulators: fp32 and bf16 (32- and 64-column boxes), columns clipped by the map (M = 136: nt's
// tile of 136 of 256 columns, its 5th box 8 wide; K = 40 / 104: nn's and tn's), rows the map
// cannot clip stored by the warp itself (nt / nn tiles ending inside an expert: skewed groups, a
// 1-row expert, many short experts; tn's 136 - 128 = 8-row tiles of M, whose next rows are the
// next expert's), tn's empty experts (zeros), the two staging halves reused across tiles (a warp
// whose last box of a tile was a bulk store starting its next tile on the self-stored path).
// Accumulation keeps the staged path under the switch, and outputs without 16-byte rows theirs.
template <class Tout>
void expect_same_bits(const std::vector<Tout>& a, const std::vector<Tout>& b, const char* form) {
  ASSERT_EQ(a.size(), b.size()) << form;
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(Tout)), 0) << form;
}
template <class Tout>
void check_tma_stores_match_staged(const FormsCase& fc) {
  const FormsOutputs<Tout> staged = check_forms<Tout>(fc);
  EnvScope tma("MOE_WGMMA4_TMA_STORES", "1");
  const FormsOutputs<Tout> tma_out = check_forms<Tout>(fc);
  expect_same_bits(staged.y, tma_out.y, "nt");
  expect_same_bits(staged.dx, tma_out.dx, "nn");
  expect_same_bits(staged.gw, tma_out.gw, "tn");
}
TEST(CudaGroupedGemmSm90, Wgmma4TmaStoresSwitchRejectsOtherValues) {
  MOE_REQUIRE_WGMMA();
  Wgmma4Scope scope;
  EnvScope tma("MOE_WGMMA4_TMA_STORES", "yes");
  EXPECT_THROW(check_forms<float>({136, 40, {0, 130, 1, 17, 0}, false}), Error);
}
TEST(CudaGroupedGemmSm90, Wgmma4TmaStoresMatchStagedSkewedGroups) {
  MOE_REQUIRE_WGMMA();
  Wgmma4Scope scope;
  check_tma_stores_match_staged<float>({136, 328, kSkewedSizes, false});
  check_tma_stores_match_staged<bf16>({136, 104, kSkewedSizes, false});
}
TEST(CudaGroupedGemmSm90, Wgmma4TmaStoresMatchStagedTwoColumnTilesAndOneRowExpert) {
  MOE_REQUIRE_WGMMA();
  Wgmma4Scope scope;
  check_tma_stores_match_staged<float>({264, 40, {0, 130, 1, 17, 0}, false});
  check_tma_stores_match_staged<bf16>({264, 40, {0, 130, 1, 17, 0}, false});
  // Odd M (101): rows no tensor map can stride; under the switch nt keeps its direct stores (and
  // nn / tn the mma kernel).
  check_tma_stores_match_staged<float>({101, 72, {0, 130, 17, 1, 0}, false});
}
TEST(CudaGroupedGemmSm90, Wgmma4TmaStoresMatchStagedManySmallAndEmptyExperts) {
  MOE_REQUIRE_WGMMA();
  Wgmma4Scope scope;
  const std::vector<int64_t> sizes = many_small_and_empty_sizes();
  check_tma_stores_match_staged<float>({24, 40, sizes, false});
  check_tma_stores_match_staged<bf16>({24, 40, sizes, false});
}
TEST(CudaGroupedGemmSm90, Wgmma4TmaStoresLeaveAccumulationStaged) {
  MOE_REQUIRE_WGMMA();
  Wgmma4Scope scope;
  check_tma_stores_match_staged<bf16>({136, 104, kSkewedSizes, true});
}

// MOE_GROUPED_GEMM=wgmma5: wgmma4's pipeline with each consumer warpgroup on its own 128 x 128 tile
// (even tiles of the block's stream to warpgroup 0, odd to 1, each stepping over the other's
// slices in the 6-stage ring). The same cases: M = 136 (nt: two column tiles, the second of 8
// columns; tn: 2 x 2 tiles per expert), K = 328 (nt: 6 slices per tile, the ring wrapping as the
// warpgroups alternate), tn's zeroed tails (each warpgroup zeroes and syncs alone), tiles with no
// slices, one-slice tiles, many tiles per block; the staged and the direct epilogue.
struct Wgmma5Scope : Sm90KernelScope {
  Wgmma5Scope() : Sm90KernelScope("wgmma5") {}
};
TEST(CudaGroupedGemmSm90, Wgmma5PingpongSkewedGroupsFp32Overwrite) {
  MOE_REQUIRE_WGMMA();
  Wgmma5Scope scope;
  check_forms<float>({136, 328, kSkewedSizes, false});
}
TEST(CudaGroupedGemmSm90, Wgmma5PingpongSkewedGroupsBf16AccumulateBothEpilogues) {
  MOE_REQUIRE_WGMMA();
  Wgmma5Scope scope;
  check_forms<bf16>({136, 104, kSkewedSizes, true});
  EnvScope direct("MOE_WGMMA4_DIRECT_STORES", "1");
  check_forms<bf16>({136, 104, kSkewedSizes, true});
}
TEST(CudaGroupedGemmSm90, Wgmma5PingpongTwoColumnTilesOddWidthAndOneSliceTiles) {
  MOE_REQUIRE_WGMMA();
  Wgmma5Scope scope;
  check_forms<float>({264, 40, {0, 130, 1, 17, 0}, true});
  check_forms<float>({101, 72, {0, 130, 17, 1, 0}, true});
}
// wgmma5's two 64-row halves per warp through the TMA stores (MOE_WGMMA4_TMA_STORES=1).
TEST(CudaGroupedGemmSm90, Wgmma5PingpongTmaStoresMatchStaged) {
  MOE_REQUIRE_WGMMA();
  Wgmma5Scope scope;
  check_tma_stores_match_staged<float>({136, 328, kSkewedSizes, false});
  check_tma_stores_match_staged<bf16>({264, 40, {0, 130, 1, 17, 0}, false});
}
TEST(CudaGroupedGemmSm90, Wgmma5PingpongManySmallAndEmptyExperts) {
  MOE_REQUIRE_WGMMA();
  Wgmma5Scope scope;
  const std::vector<int64_t> sizes = many_small_and_empty_sizes();
  check_forms<bf16>({24, 40, sizes, true});
}

// Unset (or empty): wgmma2 on an sm_90 GPU (the fastest there, docs/benchmarks.md), the mma kernel
// on other GPUs and under the emulation.
TEST(CudaGroupedGemmSm90, DefaultIsWgmma4OnSm90AndMmaElsewhere) {
  GroupedGemmKernelScope unset("");
#ifdef MOE_CUDA_EMULATION
  EXPECT_EQ(grouped_gemm_kernel(), GroupedGemmKernel::mma);
#else
  int device = 0, major = 0, minor = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
  EXPECT_EQ(grouped_gemm_kernel(), major == 9 && minor == 0 ? GroupedGemmKernel::wgmma4 : GroupedGemmKernel::mma);
#endif
}

TEST(CudaGroupedGemmSm90, UnknownKernelChoiceIsAnError) {
  {
    GroupedGemmKernelScope scope("fast");
    EXPECT_THROW(grouped_gemm_uses_wgmma(), Error);
  }
  GroupedGemmKernelScope scope("mma");
  EXPECT_FALSE(grouped_gemm_uses_wgmma());
}

}  // namespace
