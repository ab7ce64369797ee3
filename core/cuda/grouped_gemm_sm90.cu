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
#include "core/cuda/async_copy.h"
#include "core/cuda/grouped_gemm_sm90.h"
#include "core/cuda/launch.h"
#include "core/cuda/wgmma.h"

#include <cstdlib>
#include <cstring>
#include <type_traits>

#ifndef MOE_CUDA_EMULATION
#include <cuda_runtime_api.h>
#endif

namespace moe::cuda {
namespace {

constexpr int kBM = kSm90TileRows, kBN = 128, kBK = 64, kThreads = 256;
constexpr int kRowBytes = kBK * 2;            // 128: one swizzled row
constexpr int kTileBytes = kBM * kRowBytes;   // 16 KiB per operand slice
constexpr int kStageBytes = 2 * kTileBytes;   // A then B
constexpr int kAlign = 1024;                  // the 128B swizzle atom
static_assert(kRowBytes == 128 && kBM == kBN, "one 128B-swizzled geometry serves both operands");

// Two pipelines (MOE_GROUPED_GEMM): "wgmma" 5 stages, 1 block per SM (161 KiB); "wgmma2" 3 stages
// and 2 blocks per SM (97 KiB each, registers capped at 128), where one block's pipeline fill and
// epilogue overlap the other's products. Which is faster is for the GPU to tell.
constexpr int smem_bytes(int stages) { return stages * kStageBytes + kAlign; }  // + slack to align the base
constexpr int blocks_per_sm(int stages) { return stages == 3 ? 2 : 1; }

// The device code exists for sm_90a (and the emulation) only; elsewhere the kernel is a trap.
#if MOE_WGMMA_AVAILABLE
constexpr int kAcc = kBN / 2;  // fp32 registers of an m64n128 accumulator
constexpr int kChunk = 8;      // bf16 per 16-byte copy

// One operand as seen from global memory (as grouped_gemm.cu's): element (o, kk) (o = row or
// column of the output tile, kk = reduction index from the block's start) is at base[o * ld + kk]
// when K-major, else at base[kk * ld + o]; only o < o_valid and kk < k_len exist (zeros elsewhere).
struct Operand {
  const dbf16* base;
  long ld;
  int o_valid;
  long k_len;
};

// Issues the copies of reduction slice s of op into its swizzled tile. ld, o_valid (MN-major) and
// k_len (K-major) are multiples of 8, so every 16-byte chunk is whole or out.
template <bool kMn>
__device__ __forceinline__ void load_slice(const Operand& op, int s, unsigned char* tile) {
  const long k0 = long(s) * kBK;
  MOE_UNROLL
  for (int i = 0; i < kBM * kBK / kChunk / kThreads; ++i) {
    const int c = int(threadIdx.x) + i * kThreads;
    if constexpr (kMn) {
      const int kk = c / (kBM / kChunk), o = c % (kBM / kChunk) * kChunk;
      const bool in = o < op.o_valid && k0 + kk < op.k_len;
      unsigned char* dst = tile + (o / 64) * (kTileBytes / 2) + kk * kRowBytes + ((((o % 64) / kChunk) ^ (kk % 8)) * 16);
      cp_async16(dst, in ? op.base + (k0 + kk) * op.ld + o : op.base, in);
    } else {
      const int o = c / (kBK / kChunk), chunk = c % (kBK / kChunk);
      const long k = k0 + long(chunk) * kChunk;
      const bool in = o < op.o_valid && k < op.k_len;
      cp_async16(tile + o * kRowBytes + ((chunk ^ (o % 8)) * 16), in ? op.base + o * op.ld + k : op.base, in);
    }
  }
}

// The descriptor of k16 step ks of a 64-row (A) or 128-row (B) part of a swizzled tile.
template <bool kMn>
__device__ __forceinline__ uint64_t slice_desc(uint32_t tile, int ks) {
  if constexpr (kMn)  // LBO: the second 64-wide half; SBO: the next 8 k rows
    return wgmma::make_desc(tile + uint32_t(16 * kRowBytes * ks), kTileBytes / 2, 8 * kRowBytes, wgmma::Swizzle::b128);
  else  // LBO unused; SBO: the next 8 rows
    return wgmma::make_desc(tile + uint32_t(32 * ks), 16, 8 * kRowBytes, wgmma::Swizzle::b128);
}

__device__ __forceinline__ int clamp_extent(long n, int cap) { return n < 0 ? 0 : (n > cap ? cap : int(n)); }

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
  // Warpgroup wg multiplies rows 64 wg .. 64 wg + 63 of A: 64 K-major rows, or the MN-major half.
  const uint32_t a_part = uint32_t(int(threadIdx.x) / 128 * (kTileBytes / 2));
  MOE_UNROLL
  for (int s = 0; s < kStages - 2; ++s) {
    if (s < slices) {
      load_slice<kAMn>(a, s, smem + s * kStageBytes);
      load_slice<kBMn>(b, s, smem + s * kStageBytes + kTileBytes);
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
      load_slice<kAMn>(a, next, stage);
      load_slice<kBMn>(b, next, stage + kTileBytes);
    }
    cp_async_commit();
    const uint32_t sa = base + uint32_t((s % kStages) * kStageBytes) + a_part;
    const uint32_t sb = base + uint32_t((s % kStages) * kStageBytes + kTileBytes);
    wgmma::fence_operand(acc);
    wgmma::fence();
    MOE_UNROLL
    for (int ks = 0; ks < kBK / 16; ++ks)
      wgmma::mma_async<kBN, kAMn, kBMn>(acc, slice_desc<kAMn>(sa, ks), slice_desc<kBMn>(sb, ks), s > 0 || ks > 0);
    wgmma::commit_group();
    wgmma::wait_group<1>();  // slice s - 1's products are done; slice s's keep the tensor cores busy
    wgmma::fence_operand(acc);
  }
  wgmma::wait_group<0>();
  wgmma::fence_operand(acc);
  cp_async_wait<0>();  // only empty groups remain
}

// Adds (or writes) a pair of adjacent columns; `pair`: both exist and the address is aligned for
// one two-element access.
template <class Tout>
__device__ __forceinline__ void store_pair(Tout* p, float v0, float v1, bool second, bool pair, bool accumulate) {
  if (pair) {
    struct alignas(2 * sizeof(Tout)) Two {
      Tout v[2];
    };
    Two t;
    if (accumulate) t = *reinterpret_cast<const Two*>(p);
    t.v[0] = from_float<Tout>(v0 + (accumulate ? to_float(t.v[0]) : 0.0f));
    t.v[1] = from_float<Tout>(v1 + (accumulate ? to_float(t.v[1]) : 0.0f));
    *reinterpret_cast<Two*>(p) = t;
    return;
  }
  p[0] = from_float<Tout>(v0 + (accumulate ? to_float(p[0]) : 0.0f));
  if (second) p[1] = from_float<Tout>(v1 + (accumulate ? to_float(p[1]) : 0.0f));
}

// The registers straight to global memory: rows [0, nrows) x cols [0, ncols) of the tile at out
// (row stride ld), two adjacent columns per access.
template <class Tout>
__device__ __forceinline__ void store_tile(const float (&acc)[kAcc], Tout* out, long ld, int nrows, int ncols,
                                           bool accumulate, bool pair) {
  const int t = int(threadIdx.x) % 128, r0 = int(threadIdx.x) / 128 * 64;
  MOE_UNROLL
  for (int i = 0; i < kAcc; i += 2) {
    const int r = r0 + wgmma::acc_row(t, i), c = wgmma::acc_col(t, i);
    if (r < nrows && c < ncols)
      store_pair(out + r * ld + c, acc[i], acc[i + 1], c + 1 < ncols, pair && c + 1 < ncols, accumulate);
  }
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
  // The expert owning the tile, the last e with tile_starts[e] <= tile: binary lifting over e
  // (tile_starts is non-decreasing, tile_starts[0] = 0).
  int e = 0;
  for (int step = 1 << 15; step > 0; step >>= 1)
    if (e + step < experts && tile_starts[e + step] <= tile) e += step;
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
  if (!v || !*v || std::strcmp(v, "mma") == 0) return GroupedGemmKernel::mma;
  const bool one = std::strcmp(v, "wgmma") == 0, two = std::strcmp(v, "wgmma2") == 0;
  MOE_CHECK(one || two, "cuda::grouped_gemm", "MOE_GROUPED_GEMM = '", v,
            "': expected 'mma' (the default), 'wgmma' or 'wgmma2'");
#ifndef MOE_CUDA_EMULATION
  int device = 0, major = 0, minor = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
  MOE_CHECK(major == 9 && minor == 0, "cuda::grouped_gemm", "MOE_GROUPED_GEMM = ", v,
            " needs an sm_90 device (H100 / H200); device ", device, " is sm_", major, minor);
#endif
  return one ? GroupedGemmKernel::wgmma : GroupedGemmKernel::wgmma2;
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
  if (rows == 0) return;
  // Each expert's partial last tile adds at most one tile to rows / kBM.
  const size_t blocks = size_t(ceil_div(rows, kBM) + unsigned(experts)) * ceil_div(n_out, kBN);
  MOE_CHECK(blocks < (size_t(1) << 31), op, blocks, " tiles exceed the grid");
  const bool pair_c = reinterpret_cast<uintptr_t>(C) % (2 * sizeof(Tout)) == 0 && n_out % 2 == 0;
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
  const dim3 grid(ceil_div(M, kBM) * ceil_div(K, kBN), unsigned(experts));
  const bool pair_c = reinterpret_cast<uintptr_t>(dw) % (2 * sizeof(Tout)) == 0 && K % 2 == 0;
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
