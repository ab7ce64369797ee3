// The grouped GEMMs (grouped_gemm.h's nt, nn and tn forms) on Hopper's warpgroup MMA: 128 x 128
// output tiles, 2 warpgroups (256 threads) each owning 64 x 128 in 64 fp32 registers per thread,
// a cp.async pipeline (5 stages, or 3 with 2 blocks per SM) over 64-deep slices of the reduction. Each operand slice lands in a
// 128B-swizzled layout wgmma reads directly (wgmma.h), chosen by how the operand lies in memory so
// nothing is transposed on the way:
//   K-major  (reduction index contiguous: nt's x and w, nn's dy): [128][64] tile of 128-byte rows,
//            16-byte chunk c of row o at c ^ (o % 8); a k16 step moves the descriptor 32 bytes on
//   MN-major (output index contiguous: nn's w, tn's dy and x): two [64 k][64 o] halves of 128-byte
//            rows, chunk c of row k at c ^ (k % 8); a k16 step moves it 16 rows (2048 bytes) on
// Both keep the copies' writes and wgmma's reads free of bank conflicts. Per slice each
// warpgroup issues 4 m64n128k16, commits them and waits for the previous slice's group only
// (wait_group 1), so the tensor cores work on slice s while the loop moves on.
#include "core/cuda/device_sm.h"
#include "core/cuda/grouped_gemm_sm90.h"
#include "core/cuda/grouped_gemm_sm90_persistent.h"
#include "core/cuda/grouped_gemm_sm90_tma.h"
#include "core/cuda/grouped_gemm_sm90_tile.h"
#include "core/cuda/launch.h"
#include "core/cuda/wgmma.h"

#include <cstdlib>
#include <cstring>
#include <type_traits>

namespace moe::cuda {
namespace {

using namespace sm90;
constexpr int kBN = 128;
constexpr int kTileBytes = kATileBytes;       // 16 KiB per operand slice
constexpr int kStageBytes = 2 * kTileBytes;   // A then B
static_assert(kBM == kSm90TileRows && kBM == kBN, "one 128B-swizzled geometry serves both operands");

// Two pipelines (MOE_GROUPED_GEMM): "wgmma" 5 stages, 1 block per SM (161 KiB); "wgmma2" 3 stages
// and 2 blocks per SM (97 KiB each, registers capped at 128), where one block's pipeline fill and
// epilogue overlap the other's products. Which is faster is for the GPU to tell.
constexpr int smem_bytes(int stages) { return stages * kStageBytes + kAlign; }  // + slack to align the base
constexpr int blocks_per_sm(int stages) { return stages == 3 ? 2 : 1; }

// The device code exists for sm_90a (and the emulation) only; elsewhere the kernel is a trap.
#if MOE_WGMMA_AVAILABLE
constexpr int kAcc = kBN / 2;  // fp32 registers of an m64n128 accumulator

// acc = sum over `slices` 64-deep slices of A B, through the pipeline. The hazards: slice s's
// copies are waited for (cp.async.wait_group), made visible to the async proxy
// (fence.proxy.async) and published by the barrier; that barrier also tells that every warpgroup
// has retired slice s - 2's wgmma (its wait_group 1 at slice s - 1), so the copies issued after it
// may overwrite that buffer: the prefetch distance is kStages - 2. One copy group is committed per
// slice slot (empty past the end), so wait_group kStages - 3 at slice s means "s has landed".
template <int kStages, bool kAMn, bool kBMn>
__device__ __forceinline__ void mainloop(unsigned char* smem_raw, float (&acc)[kAcc], int slices, const Operand& a,
                                         const Operand& b) {
  // The swizzle acts on absolute shared addresses: the stages start on a 1024-byte boundary.
  const uint32_t raw = wgmma::smem_address(smem_raw);
  unsigned char* smem = smem_raw + (kAlign - raw % kAlign) % kAlign;
  const uint32_t base = wgmma::smem_address(smem);
  MOE_UNROLL
  for (int s = 0; s < kStages - 2; ++s) {
    if (s < slices) {
      load_slice<kAMn, kBM>(a, s, smem + s * kStageBytes);
      load_slice<kBMn, kBN>(b, s, smem + s * kStageBytes + kTileBytes);
    }
    cp_async_commit();
  }
  if (slices == 0)
    for (float& v : acc) v = 0.0f;
  for (int s = 0; s < slices; ++s) {
    cp_async_wait<kStages - 3>();
    wgmma::fence_proxy_async();
    __syncthreads();
    const int next = s + kStages - 2;
    if (next < slices) {
      unsigned char* stage = smem + (next % kStages) * kStageBytes;
      load_slice<kAMn, kBM>(a, next, stage);
      load_slice<kBMn, kBN>(b, next, stage + kTileBytes);
    }
    cp_async_commit();
    const uint32_t sa = base + uint32_t((s % kStages) * kStageBytes) + a_part();
    const uint32_t sb = base + uint32_t((s % kStages) * kStageBytes + kTileBytes);
    slice_products<kBN, kAMn, kBMn>(acc, sa, sb, s > 0);
  }
  wgmma::wait_group<0>();
  wgmma::fence_operand(acc);
  cp_async_wait<0>();  // only empty groups remain
}

#endif  // MOE_WGMMA_AVAILABLE

// C rows grouped by expert: C[r, n0..] (+)= A[r, :] op(B_e). kTransB (nt): B_e is w_e [n_out, k_red]
// (K-major), else (nn) [k_red, n_out] (MN-major). Blocks run column tile fastest (as
// grouped_gemm.cu's): the blocks resident at once share a few row tiles and their experts' weights.
// pair_c: C and n_out allow two-element stores.
template <int kStages, bool kTransB, class Tout>
__global__ void __launch_bounds__(kThreads, blocks_per_sm(kStages))
    grouped_rows_wgmma_kernel(const dbf16* A, const dbf16* B, const int32_t* offsets, const int32_t* tile_starts,
                              int experts, long n_out, long k_red, Tout* C, bool accumulate, bool pair_c) {
#if MOE_WGMMA_AVAILABLE
  MOE_DYNAMIC_SHARED(unsigned char, smem);
  const int col_tiles = int((n_out + kBN - 1) / kBN);
  const int tile = int(blockIdx.x) / col_tiles;
  if (tile >= tile_starts[experts]) return;  // the grid is an upper bound on the tiles
  const int e = expert_of_tile(tile_starts, experts, tile);
  const long row0 = offsets[e] + long(tile - tile_starts[e]) * kBM;
  const long n0 = long(int(blockIdx.x) % col_tiles) * kBN;
  const int rows = clamp_extent(offsets[e + 1] - row0, kBM), cols = clamp_extent(n_out - n0, kBN);
  const dbf16* Be = B + long(e) * n_out * k_red;
  const Operand a{A + row0 * k_red, k_red, rows, k_red};
  const Operand b = kTransB ? Operand{Be + n0 * k_red, k_red, cols, k_red} : Operand{Be + n0, n_out, cols, k_red};
  float acc[kAcc];
  mainloop<kStages, false, !kTransB>(smem, acc, int((k_red + kBK - 1) / kBK), a, b);
  store_tile(acc, C + row0 * n_out + n0, n_out, rows, cols, accumulate, pair_c);
#else
  __trap();  // launched only on sm_90 devices, which run the sm_90a code
#endif
}

// dW_e[m0.., n0..] (+)= A_e^T B_e over the expert's rows: A [rows, M], B [rows, K], dW [E, M, K];
// both operands MN-major (their rows are the reduction).
template <int kStages, class Tout>
__global__ void __launch_bounds__(kThreads, blocks_per_sm(kStages))
    grouped_weights_wgmma_kernel(const dbf16* A, const dbf16* B, const int32_t* offsets, long M, long K, Tout* dW,
                                 bool accumulate, bool pair_c) {
#if MOE_WGMMA_AVAILABLE
  MOE_DYNAMIC_SHARED(unsigned char, smem);
  const int e = int(blockIdx.y);
  const long tiles_n = (K + kBN - 1) / kBN;
  const long m0 = long(blockIdx.x / tiles_n) * kBM, n0 = long(blockIdx.x % tiles_n) * kBN;
  const long r_begin = offsets[e], r_len = offsets[e + 1] - r_begin;
  if (r_len == 0 && accumulate) return;  // nothing to add
  const int rows = clamp_extent(M - m0, kBM), cols = clamp_extent(K - n0, kBN);
  const Operand a{A + r_begin * M + m0, M, rows, r_len};
  const Operand b{B + r_begin * K + n0, K, cols, r_len};
  float acc[kAcc];
  mainloop<kStages, true, true>(smem, acc, int((r_len + kBK - 1) / kBK), a, b);
  store_tile(acc, dW + long(e) * M * K + m0 * K + n0, K, rows, cols, accumulate, pair_c);
#else
  __trap();
#endif
}

bool aligned16(const void* p, long ld_elements) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0 && (ld_elements * 2) % 16 == 0;
}

}  // namespace

GroupedGemmKernel grouped_gemm_kernel() {
  const char* v = std::getenv("MOE_GROUPED_GEMM");
  if (!v || !*v) {
    // The default: wgmma4 on an sm_90 GPU, where it measured 0.54-0.93 of a dense cuBLAS GEMM
    // (0.71-0.93 in every form but tn with 512 rows per expert) against wgmma2's 0.35-0.50 in the
    // same run (H100, docs/benchmarks.md); the mma kernel elsewhere, and under the emulation,
    // whose tests select the wgmma kernels by name.
#ifdef MOE_CUDA_EMULATION
    return GroupedGemmKernel::mma;
#else
    static const bool sm90 = device_sm() == 90;
    return sm90 ? GroupedGemmKernel::wgmma4 : GroupedGemmKernel::mma;
#endif
  }
  if (std::strcmp(v, "mma") == 0) return GroupedGemmKernel::mma;
  const bool one = std::strcmp(v, "wgmma") == 0, two = std::strcmp(v, "wgmma2") == 0,
             three = std::strcmp(v, "wgmma3") == 0, four = std::strcmp(v, "wgmma4") == 0,
             five = std::strcmp(v, "wgmma5") == 0;
  MOE_CHECK(one || two || three || four || five, "cuda::grouped_gemm", "MOE_GROUPED_GEMM = '", v,
            "': expected 'mma', 'wgmma', 'wgmma2', 'wgmma3', 'wgmma4' or 'wgmma5' (unset: wgmma4 on sm_90, else mma)");
  int device = 0;
  const int sm = device_sm(&device);
  MOE_CHECK(sm == 90, "cuda::grouped_gemm", "MOE_GROUPED_GEMM = ", v, " needs an sm_90 device (H100 / H200); device ",
            device, " is sm_", sm);
  return one     ? GroupedGemmKernel::wgmma
         : two   ? GroupedGemmKernel::wgmma2
         : three ? GroupedGemmKernel::wgmma3
         : four  ? GroupedGemmKernel::wgmma4
                 : GroupedGemmKernel::wgmma5;
}

bool grouped_gemm_uses_wgmma() { return grouped_gemm_kernel() != GroupedGemmKernel::mma; }

GroupedGemmKernelScope::GroupedGemmKernelScope(const char* kernel) {
  if (const char* v = std::getenv("MOE_GROUPED_GEMM")) old_ = v;
  setenv("MOE_GROUPED_GEMM", kernel, 1);
}
GroupedGemmKernelScope::~GroupedGemmKernelScope() {
  if (old_)
    setenv("MOE_GROUPED_GEMM", old_->c_str(), 1);
  else
    unsetenv("MOE_GROUPED_GEMM");
}

namespace {

// Runs f(std::integral_constant<int, stages>) for the pipeline MOE_GROUPED_GEMM selects.
template <class F>
void with_stages(F f) {
  if (grouped_gemm_kernel() == GroupedGemmKernel::wgmma2)
    f(std::integral_constant<int, 3>{});
  else
    f(std::integral_constant<int, 5>{});
}

}  // namespace

template <bool kTransB, class Tout>
void grouped_rows_sm90(const bf16* A, const bf16* B, const int32_t* offsets, const int32_t* tile_starts, int experts,
                       long rows, long n_out, long k_red, Tout* C, bool accumulate, cudaStream_t stream) {
  const char* op = kTransB ? "cuda::grouped_gemm_nt (wgmma)" : "cuda::grouped_gemm_nn (wgmma)";
  MOE_CHECK(aligned16(A, k_red) && aligned16(B, kTransB ? k_red : n_out), op,
            "operands must be 16-byte aligned with row strides a multiple of 8, got ", k_red, " and ",
            kTransB ? k_red : n_out);
  const GroupedGemmKernel kernel = grouped_gemm_kernel();
  if (kernel == GroupedGemmKernel::wgmma3)
    return grouped_rows_sm90_persistent<kTransB>(A, B, offsets, tile_starts, experts, rows, n_out, k_red, C,
                                                 accumulate, stream);
  if (kernel == GroupedGemmKernel::wgmma4 || kernel == GroupedGemmKernel::wgmma5)
    return grouped_rows_sm90_tma<kTransB>(A, B, offsets, tile_starts, experts, rows, n_out, k_red, C, accumulate,
                                          kernel == GroupedGemmKernel::wgmma5, stream);
  if (rows == 0) return;
  // Each expert's partial last tile adds at most one tile to rows / kBM.
  const size_t blocks = size_t(ceil_div(rows, kBM) + unsigned(experts)) * ceil_div(n_out, kBN);
  MOE_CHECK(blocks < (size_t(1) << 31), op, blocks, " tiles exceed the grid");
  const bool pair_c = pair_stores(C, n_out);
  with_stages([&](auto stages) {
    constexpr int kStages = decltype(stages)::value;
    allow_dynamic_shared(op, grouped_rows_wgmma_kernel<kStages, kTransB, device_t<Tout>>, smem_bytes(kStages));
    MOE_LAUNCH((grouped_rows_wgmma_kernel<kStages, kTransB, device_t<Tout>>), unsigned(blocks), kThreads,
               smem_bytes(kStages), stream, dev(A), dev(B), offsets, tile_starts, experts, n_out, k_red, dev(C),
               accumulate, pair_c);
  });
}

template <class Tout>
void grouped_gemm_tn_sm90(const bf16* dy, const bf16* x, const int32_t* offsets, int experts, long M, long K,
                          Tout* dw, bool accumulate, cudaStream_t stream) {
  const char* op = "cuda::grouped_gemm_tn (wgmma)";
  MOE_CHECK(aligned16(dy, M) && aligned16(x, K), op,
            "dy and x must be 16-byte aligned with M and K multiples of 8, got M = ", M, ", K = ", K);
  const GroupedGemmKernel kernel = grouped_gemm_kernel();
  if (kernel == GroupedGemmKernel::wgmma3)
    return grouped_gemm_tn_sm90_persistent(dy, x, offsets, experts, M, K, dw, accumulate, stream);
  if (kernel == GroupedGemmKernel::wgmma4 || kernel == GroupedGemmKernel::wgmma5)
    return grouped_gemm_tn_sm90_tma(dy, x, offsets, experts, M, K, dw, accumulate,
                                    kernel == GroupedGemmKernel::wgmma5, stream);
  const dim3 grid(ceil_div(M, kBM) * ceil_div(K, kBN), unsigned(experts));
  const bool pair_c = pair_stores(dw, K);
  with_stages([&](auto stages) {
    constexpr int kStages = decltype(stages)::value;
    allow_dynamic_shared(op, grouped_weights_wgmma_kernel<kStages, device_t<Tout>>, smem_bytes(kStages));
    MOE_LAUNCH((grouped_weights_wgmma_kernel<kStages, device_t<Tout>>), grid, kThreads, smem_bytes(kStages), stream,
               dev(dy), dev(x), offsets, M, K, dev(dw), accumulate, pair_c);
  });
}

#define MOE_INSTANTIATE(T)                                                                                      \
  template void grouped_rows_sm90<true, T>(const bf16*, const bf16*, const int32_t*, const int32_t*, int, long, \
                                           long, long, T*, bool, cudaStream_t);                                 \
  template void grouped_rows_sm90<false, T>(const bf16*, const bf16*, const int32_t*, const int32_t*, int, long, \
                                            long, long, T*, bool, cudaStream_t);                                 \
  template void grouped_gemm_tn_sm90<T>(const bf16*, const bf16*, const int32_t*, int, long, long, T*, bool,      \
                                        cudaStream_t);
MOE_INSTANTIATE(float)
MOE_INSTANTIATE(bf16)
#undef MOE_INSTANTIATE

}  // namespace moe::cuda
