// Tests of the emulated nvcuda::wmma: mma over every operand layout and shape against loops, and
// the misuse the GPU leaves undefined made loud: a partial warp, lanes disagreeing on arguments,
// a misaligned operand, and a tile read before the block's barrier.
#ifdef MOE_CUDA_EMULATION
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/cuda/launch.h"
#include "core/cuda/memory.h"
#include "core/cuda/wmma.h"
#include "core/error.h"
#include "tests/cuda/kernel_test_util.h"

using namespace moe;
using namespace moe::cuda;
using namespace moe::test;
namespace wmma = nvcuda::wmma;

namespace {

// One warp: d = a b + c for one m x n x k tile; a row-major, b col-major or row-major, c loaded
// column-major, d stored row-major. Operands are staged in (aligned) shared memory.
template <int M, int N, int K, class LayoutB>
__global__ void one_tile_kernel(const dbf16* a, const dbf16* b, const float* c, float* d) {
  MOE_SHARED(dbf16, sa, [M * K]);
  MOE_SHARED(dbf16, sb, [K * N]);
  MOE_SHARED(float, sc, [M * N]);
  for (int i = threadIdx.x; i < M * K; i += 32) sa[i] = a[i];
  for (int i = threadIdx.x; i < K * N; i += 32) sb[i] = b[i];
  for (int i = threadIdx.x; i < M * N; i += 32) sc[i] = c[i];
  __syncwarp();
  wmma::fragment<wmma::matrix_a, M, N, K, dbf16, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, M, N, K, dbf16, LayoutB> fb;
  wmma::fragment<wmma::accumulator, M, N, K, float> fc;
  wmma::load_matrix_sync(fa, sa, K);
  wmma::load_matrix_sync(fb, sb, std::is_same_v<LayoutB, wmma::col_major> ? K : N);
  wmma::load_matrix_sync(fc, sc, M, wmma::mem_col_major);
  wmma::mma_sync(fc, fa, fb, fc);
  __syncwarp();
  wmma::store_matrix_sync(sc, fc, N, wmma::mem_row_major);
  __syncwarp();
  for (int i = threadIdx.x; i < M * N; i += 32) d[i] = sc[i];
}

template <int M, int N, int K, class LayoutB>
void check_tile(unsigned seed) {
  constexpr bool b_col = std::is_same_v<LayoutB, wmma::col_major>;
  auto a = round_bf16(random_normal(M * K, seed)), b = round_bf16(random_normal(K * N, seed + 1));
  auto c = random_normal(M * N, seed + 2);
  DeviceBuffer<bf16> da = upload<bf16>(a), db = upload<bf16>(b);
  DeviceBuffer<float> dc(c), dd(M * N);
  MOE_LAUNCH((one_tile_kernel<M, N, K, LayoutB>), 1, 32, 0, nullptr, dev(static_cast<const bf16*>(da.get())),
             dev(static_cast<const bf16*>(db.get())), static_cast<const float*>(dc.get()), dd.get());
  std::vector<double> want(M * N);
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      double s = c[static_cast<size_t>(j) * M + i];  // c is column-major
      for (int k = 0; k < K; ++k)
        s += double(a[static_cast<size_t>(i) * K + k]) *
             (b_col ? b[static_cast<size_t>(j) * K + k] : b[static_cast<size_t>(k) * N + j]);
      want[static_cast<size_t>(i) * N + j] = s;
    }
  EXPECT_TRUE(all_near(dd.to_host(), want, 1e-5, 1e-5)) << M << "x" << N << "x" << K << (b_col ? " col" : " row");
}

TEST(CudaEmulationWmma, MmaMatchesLoopsForShapesAndLayouts) {
  check_tile<16, 16, 16, wmma::col_major>(11);
  check_tile<16, 16, 16, wmma::row_major>(12);
  check_tile<32, 8, 16, wmma::col_major>(13);
  check_tile<8, 32, 16, wmma::row_major>(14);
}

// `mode`: 0 lanes < 16 only, 1 a lane-dependent pointer, 2 a misaligned pointer.
__global__ void misuse_kernel(const dbf16* a, int mode) {
  MOE_SHARED(dbf16, sa, [2 * 16 * 16 + 16]);
  for (int i = threadIdx.x; i < 2 * 16 * 16 + 16; i += blockDim.x) sa[i] = a[0];
  __syncwarp();
  wmma::fragment<wmma::matrix_a, 16, 16, 16, dbf16, wmma::row_major> fa;
  if (mode == 0 && threadIdx.x < 16) wmma::load_matrix_sync(fa, sa, 16);
  if (mode == 1) wmma::load_matrix_sync(fa, sa + (threadIdx.x == 7 ? 256 : 0), 16);
  if (mode == 2) wmma::load_matrix_sync(fa, sa + 8, 16);
}

std::string misuse_error(int mode, unsigned threads) {
  DeviceBuffer<bf16> a(std::vector<bf16>{float_to_bf16(1.0f)});
  try {
    MOE_LAUNCH(misuse_kernel, 1, threads, 0, nullptr, dev(static_cast<const bf16*>(a.get())), mode);
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

TEST(CudaEmulationWmma, MisuseIsAnErrorNamingTheCall) {
  EXPECT_NE(misuse_error(0, 32).find("wmma::load_matrix_sync needs all 32 lanes"), std::string::npos)
      << misuse_error(0, 32);
  EXPECT_NE(misuse_error(1, 16).find("needs all 32 lanes"), std::string::npos) << "a warp of 16 threads";
  EXPECT_NE(misuse_error(1, 32).find("passed different arguments"), std::string::npos) << misuse_error(1, 32);
  EXPECT_NE(misuse_error(2, 32).find("not 256-bit aligned"), std::string::npos) << misuse_error(2, 32);
}

// Warp 1 stages the A tile, warp 0 multiplies it: correct only with the barrier in between.
__global__ void staged_by_other_warp_kernel(const dbf16* a, float* out, bool barrier) {
  MOE_SHARED(dbf16, sa, [16 * 16]);
  MOE_SHARED(dbf16, ones, [16 * 16]);
  MOE_SHARED(float, sc, [16 * 16]);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (warp == 1)
    for (int i = lane; i < 256; i += 32) sa[i] = a[blockIdx.x * 256 + i];
  else
    for (int i = lane; i < 256; i += 32) ones[i] = from_float<dbf16>(1.0f);
  if (barrier) __syncthreads();
  if (warp == 0) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, dbf16, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, dbf16, wmma::row_major> fb;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
    wmma::fill_fragment(fc, 0.0f);
    wmma::load_matrix_sync(fa, sa, 16);
    wmma::load_matrix_sync(fb, ones, 16);
    wmma::mma_sync(fc, fa, fb, fc);
    wmma::store_matrix_sync(sc, fc, 16, wmma::mem_row_major);
    __syncwarp();
    for (int i = lane; i < 16; i += 32) out[blockIdx.x * 16 + i] = sc[i * 16];  // row sums of A
  }
}

TEST(CudaEmulationWmma, TileReadBeforeTheBarrierIsCaught) {
  const int blocks = 24;
  auto a = round_bf16(random_normal(static_cast<size_t>(blocks) * 256, 15));
  std::vector<double> want(static_cast<size_t>(blocks) * 16, 0.0);
  for (int b = 0; b < blocks; ++b)
    for (int i = 0; i < 16; ++i)
      for (int j = 0; j < 16; ++j)
        want[static_cast<size_t>(b) * 16 + i] += a[static_cast<size_t>(b) * 256 + i * 16 + j];
  DeviceBuffer<bf16> da = upload<bf16>(a);
  DeviceBuffer<float> out(static_cast<size_t>(blocks) * 16);
  MOE_LAUNCH(staged_by_other_warp_kernel, blocks, 64, 0, nullptr, dev(static_cast<const bf16*>(da.get())), out.get(),
             true);
  EXPECT_TRUE(all_near(out.to_host(), want, 1e-5, 1e-5)) << "with the barrier";
  int wrong = 0;
  for (int attempt = 0; attempt < 3; ++attempt) {
    MOE_LAUNCH(staged_by_other_warp_kernel, blocks, 64, 0, nullptr, dev(static_cast<const bf16*>(da.get())), out.get(),
               false);
    wrong += !all_near(out.to_host(), want, 1e-5, 1e-5);
  }
  EXPECT_GT(wrong, 0) << "the missing barrier went unnoticed in every attempt";
}

}  // namespace
#endif  // MOE_CUDA_EMULATION
