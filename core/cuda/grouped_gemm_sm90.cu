// Grouped GEMM nt (y = x w_e^T per expert group) on Hopper's warpgroup MMA: 128 x 128 output tiles,
// 2 warpgroups (256 threads) each owning 64 x 128 in 64 fp32 registers per thread, a 5-stage
// cp.async pipeline over 64-deep slices of K. Each operand slice is a [128][64] bf16 tile in the
// 128B-swizzled K-major layout (wgmma.h): 128-byte rows, 16-byte chunk c of row r stored at chunk
// c ^ (r % 8), 1024-byte aligned atoms of 8 rows. That layout keeps both the copies' writes and
// wgmma's reads free of bank conflicts, and w_e [M, K] is K-major B as it is stored, so nothing is
// transposed. Per slice each warpgroup issues 4 m64n128k16 (the descriptors' start advanced 32
// bytes per k16 step within the swizzled rows), commits them and waits for the previous slice's
// group only (wait_group 1), so the tensor cores work on slice s while the loop moves on.
//
// The pipeline's hazards: slice s's copies are waited for (cp.async.wait_group), made visible to
// the async proxy (fence.proxy.async) and published by the barrier; the barrier at slice s also
// tells that every warpgroup has retired slice s - 2's wgmma (its wait_group 1 at slice s - 1), so
// the copies issued after it may overwrite that buffer: the prefetch distance is kStages - 2.
// Ragged edges (rows past the expert's group, columns past M, K past its end) are zero-filled by
// the copies (src-size 0); the epilogue writes the registers straight to global memory, two
// adjacent columns per access.
#include "core/cuda/async_copy.h"
#include "core/cuda/grouped_gemm_sm90.h"
#include "core/cuda/launch.h"
#include "core/cuda/wgmma.h"

#include <cstdlib>
#include <cstring>

#ifndef MOE_CUDA_EMULATION
#include <cuda_runtime_api.h>
#endif

namespace moe::cuda {
namespace {

constexpr int kBM = kSm90TileRows, kBN = 128, kBK = 64, kThreads = 256, kStages = 5;
constexpr int kRowBytes = kBK * 2;            // 128: one swizzled row
constexpr int kTileBytes = kBM * kRowBytes;   // 16 KiB per operand slice
constexpr int kStageBytes = 2 * kTileBytes;   // A then B
constexpr int kAlign = 1024;                  // the 128B swizzle atom
constexpr int kSmemBytes = kStages * kStageBytes + kAlign;  // + slack to align the base
static_assert(kRowBytes == 128 && kBM == kBN, "one 128B-swizzled geometry serves both operands");

// The device code exists for sm_90a (and the emulation) only; elsewhere the kernel is a trap.
#if MOE_WGMMA_AVAILABLE
constexpr int kAcc = kBN / 2;  // fp32 registers of an m64n128 accumulator
constexpr int kChunk = 8;      // bf16 per 16-byte copy

// Issues the copies of K slice s of a k-contiguous operand (row o at base + o * ld, o < o_valid,
// k < k_len; zeros elsewhere) into a swizzled [128][64] tile.
__device__ __forceinline__ void load_slice(const dbf16* base, long ld, int o_valid, long k_len, int s,
                                           unsigned char* tile) {
  const long k0 = long(s) * kBK;
  MOE_UNROLL
  for (int i = 0; i < kBM * kBK / kChunk / kThreads; ++i) {
    const int c = int(threadIdx.x) + i * kThreads;
    const int r = c / (kBK / kChunk), chunk = c % (kBK / kChunk);
    const long k = k0 + long(chunk) * kChunk;
    const bool in = r < o_valid && k < k_len;  // K % 8 == 0: a chunk is whole or out
    cp_async16(tile + r * kRowBytes + ((chunk ^ (r % 8)) * 16), in ? base + r * ld + k : base, in);
  }
}

__device__ __forceinline__ uint64_t tile_desc(uint32_t addr) {
  return wgmma::make_desc(addr, 16, 8 * kRowBytes, wgmma::Swizzle::b128);  // LBO unused, SBO: 8 rows
}

__device__ __forceinline__ int clamp_extent(long n, int cap) { return n < 0 ? 0 : (n > cap ? cap : int(n)); }

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
#endif  // MOE_WGMMA_AVAILABLE

// Blocks run column tile fastest (as grouped_gemm.cu's): the blocks resident at once share a few
// row tiles and their experts' weights. pair_c: y and M allow two-element stores.
template <class Tout>
__global__ void __launch_bounds__(kThreads, 1)
    grouped_nt_wgmma_kernel(const dbf16* A, const dbf16* B, const int32_t* offsets, const int32_t* tile_starts,
                            int experts, long n_out, long k_red, Tout* C, bool accumulate, bool pair_c) {
#if MOE_WGMMA_AVAILABLE
  MOE_DYNAMIC_SHARED(unsigned char, smem_raw);
  const int col_tiles = int((n_out + kBN - 1) / kBN);
  const int tile = int(blockIdx.x) / col_tiles;
  if (tile >= tile_starts[experts]) return;  // the grid is an upper bound on the tiles
  int lo = 0, hi = experts - 1;              // the expert owning the tile: the last e with tile_starts[e] <= tile
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (tile_starts[mid] <= tile)
      lo = mid;
    else
      hi = mid - 1;
  }
  const long row0 = offsets[lo] + long(tile - tile_starts[lo]) * kBM;
  const long n0 = long(int(blockIdx.x) % col_tiles) * kBN;
  const int rows = clamp_extent(offsets[lo + 1] - row0, kBM), cols = clamp_extent(n_out - n0, kBN);
  const dbf16* a = A + row0 * k_red;
  const dbf16* b = B + long(lo) * n_out * k_red + n0 * k_red;

  // The swizzle acts on absolute shared addresses: the stages start on a 1024-byte boundary.
  const uint32_t raw = wgmma::smem_address(smem_raw);
  unsigned char* smem = smem_raw + (kAlign - raw % kAlign) % kAlign;
  const uint32_t base = wgmma::smem_address(smem);
  const int wg = int(threadIdx.x) / 128;
  const int slices = int((k_red + kBK - 1) / kBK);

  MOE_UNROLL
  for (int s = 0; s < kStages - 2; ++s) {
    if (s < slices) {
      load_slice(a, k_red, rows, k_red, s, smem + s * kStageBytes);
      load_slice(b, k_red, cols, k_red, s, smem + s * kStageBytes + kTileBytes);
    }
    cp_async_commit();
  }
  float acc[kAcc];
  for (int s = 0; s < slices; ++s) {
    cp_async_wait<kStages - 3>();  // this thread's copies of slice s have landed
    wgmma::fence_proxy_async();    // ... and are visible to wgmma's reads
    __syncthreads();               // every thread's; and slice s - 2's wgmma is retired everywhere
    const int next = s + kStages - 2;
    if (next < slices) {
      unsigned char* stage = smem + (next % kStages) * kStageBytes;
      load_slice(a, k_red, rows, k_red, next, stage);
      load_slice(b, k_red, cols, k_red, next, stage + kTileBytes);
    }
    cp_async_commit();
    const uint32_t sa = base + uint32_t((s % kStages) * kStageBytes + wg * (kTileBytes / 2));
    const uint32_t sb = base + uint32_t((s % kStages) * kStageBytes + kTileBytes);
    wgmma::fence_operand(acc);
    wgmma::fence();
    MOE_UNROLL
    for (int ks = 0; ks < kBK / 16; ++ks)
      wgmma::mma_async<kBN>(acc, tile_desc(sa + 32 * ks), tile_desc(sb + 32 * ks), s > 0 || ks > 0);
    wgmma::commit_group();
    wgmma::wait_group<1>();  // slice s - 1's products are done; slice s's keep the tensor cores busy
    wgmma::fence_operand(acc);
  }
  wgmma::wait_group<0>();
  wgmma::fence_operand(acc);
  cp_async_wait<0>();  // only empty groups remain

  const int t = int(threadIdx.x) % 128;
  Tout* out = C + row0 * n_out + n0;
  MOE_UNROLL
  for (int i = 0; i < kAcc; i += 2) {
    const int r = wg * 64 + wgmma::acc_row(t, i), c = wgmma::acc_col(t, i);
    if (r < rows && c < cols)
      store_pair(out + r * n_out + c, acc[i], acc[i + 1], c + 1 < cols, pair_c && c + 1 < cols, accumulate);
  }
#else
  __trap();  // launched only on sm_90 devices, which run the sm_90a code
#endif
}

bool aligned16(const void* p, long ld_elements) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0 && (ld_elements * 2) % 16 == 0;
}

}  // namespace

bool grouped_gemm_uses_wgmma() {
  const char* v = std::getenv("MOE_GROUPED_GEMM");
  if (!v || !*v || std::strcmp(v, "mma") == 0) return false;
  MOE_CHECK(std::strcmp(v, "wgmma") == 0, "cuda::grouped_gemm", "MOE_GROUPED_GEMM = '", v,
            "': expected 'mma' (the default) or 'wgmma'");
#ifndef MOE_CUDA_EMULATION
  int device = 0, major = 0, minor = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
  MOE_CHECK(major == 9 && minor == 0, "cuda::grouped_gemm", "MOE_GROUPED_GEMM = wgmma needs an sm_90 device (H100 / H200); device ",
            device, " is sm_", major, minor);
#endif
  return true;
}

template <class Tout>
void grouped_gemm_nt_sm90(const bf16* x, const bf16* w, const int32_t* offsets, const int32_t* tile_starts,
                          int experts, long rows, long M, long K, Tout* y, bool accumulate, cudaStream_t stream) {
  MOE_CHECK(aligned16(x, K) && aligned16(w, K), "cuda::grouped_gemm_nt (wgmma)",
            "x and w must be 16-byte aligned with K a multiple of 8, got K = ", K);
  if (rows == 0) return;
  // Each expert's partial last tile adds at most one tile to rows / kBM.
  const size_t blocks = size_t(ceil_div(rows, kBM) + unsigned(experts)) * ceil_div(M, kBN);
  MOE_CHECK(blocks < (size_t(1) << 31), "cuda::grouped_gemm_nt (wgmma)", blocks, " tiles exceed the grid");
  const bool pair_c = reinterpret_cast<uintptr_t>(y) % (2 * sizeof(Tout)) == 0 && M % 2 == 0;
  allow_dynamic_shared("cuda::grouped_gemm_nt (wgmma)", grouped_nt_wgmma_kernel<device_t<Tout>>, kSmemBytes);
  MOE_LAUNCH(grouped_nt_wgmma_kernel<device_t<Tout>>, unsigned(blocks), kThreads, kSmemBytes, stream, dev(x), dev(w),
             offsets, tile_starts, experts, M, K, dev(y), accumulate, pair_c);
}

template void grouped_gemm_nt_sm90<float>(const bf16*, const bf16*, const int32_t*, const int32_t*, int, long, long,
                                          long, float*, bool, cudaStream_t);
template void grouped_gemm_nt_sm90<bf16>(const bf16*, const bf16*, const int32_t*, const int32_t*, int, long, long,
                                         long, bf16*, bool, cudaStream_t);

}  // namespace moe::cuda
