// Hopper warpgroup MMA (PTX wgmma, sm_90a only): D (64 x N, fp32, in registers) += A (64 x 16,
// bf16) B (16 x N, bf16), both multiplicands read from shared memory through 64-bit matrix
// descriptors, asynchronously. A warpgroup is 4 consecutive warps (threads 128 w .. 128 w + 127 of
// the block); every wgmma instruction is executed by all of its 128 threads together.
//
//   fence()                   wgmma.fence: before the first mma_async, and again after the thread
//                             touched the accumulator registers (a wait_group, a store, a reset)
//   mma_async<N, TA, TB>(d, da, db, accumulate)   d (+)= A B, d[N / 2] per thread, N = 128 or 256 on
//                             the GPU (64 too under the emulation: add its asm to use it); accumulate = false computes d = A B (the scale-d predicate);
//                             TA / TB (imm-trans-a / -b): false K-major, true M- / N-major
//   commit_group()            closes the mma_asyncs issued since the last commit into one group
//   wait_group<N>()           waits until at most the newest N groups are pending: only then are
//                             their accumulators written and their shared memory read
//   fence_operand(d)          keeps the compiler from moving accesses of d across the asm above
//   fence_proxy_async()       fence.proxy.async.shared::cta: this thread's generic-proxy writes of
//                             shared memory (st.shared, cp.async) become visible to wgmma's reads
//                             (the async proxy); run it before the barrier that hands a stage over
//
// The facts implemented, and where they come from (PTX ISA 8.x/9.0, section 9.7.15 "Asynchronous
// Warpgroup Level Matrix Multiply-Accumulate Instructions", and CUTLASS cute/arch/mma_sm90_desc.hpp,
// cute/arch/mma_sm90_gmma.hpp):
//  * Matrix descriptor (PTX "Matrix Descriptor Format"; CUTLASS GmmaDescriptor): bits 0-13 start
//    address, 16-29 leading dimension byte offset (LBO), 32-45 stride dimension byte offset (SBO),
//    each encoded as (x & 0x3FFFF) >> 4; bits 49-51 base offset (0 when the swizzle pattern starts
//    on its repeat boundary: 1024 bytes for 128B); bits 62-63 swizzle: 0 none, 1 128B, 2 64B, 3 32B.
//  * K-major canonical layouts, T = 8 bf16 = 16 bytes (PTX "Canonical Layouts", in CuTe notation,
//    element (row r, reduction index k) of A (r < 64) or of B (r = n < N)):
//      no swizzle  ((8,m),(T,2k)):((1T,SBO),(1,LBO))   byte = (r/8) SBO + (r%8) 16 + (k/8) LBO + (k%8) 2
//                  (core matrices of 8 rows x 16 bytes, 128 contiguous bytes each)
//      128B swizzle Swizzle<3,4,3> o ((8,m),(T,2k)):((8T,SBO),(1,T))
//                  byte = (r/8) SBO + (r%8) 128 + 2k, then bits 4-6 ^= bits 7-9 (16-byte chunk
//                  index ^= row within the 8-row, 1024-byte atom); LBO unused ("assumed 1").
//    For K-major B the stored rows are B's columns n: w [N][K] row-major is K-major B as it is.
//  * MN-major (transposed, imm-trans = 1) canonical layout with 128B swizzle, element (r = m of A
//    or n of B, k):  Swizzle<3,4,3> o ((T,8,m),(8,k)):((1,T,LBO),(8T,SBO))
//                  byte = (r/64) LBO + (r%64) 2 + (k%8) 128 + (k/8) SBO, then the same XOR
//    (PTX "Leading / Stride Dimension Byte Offset": MN-major swizzled, LBO = offset between
//    (swizzle bytes / 16) = 8 128-bit "rows" along MN, i.e. 64 bf16; SBO = offset between 8-deep
//    groups along K). So a [k][r] row-major tile (r contiguous) stored as 64-wide halves of
//    128-byte rows is MN-major: x [rows][K] is MN-major B of dw = dy^T x, w [M][K] of dx = dy w.
//  * Accumulator fragment (PTX "Matrix Fragments for wgmma.m64nNk16", Figure "WGMMA .m64nNk16
//    register fragment layout for accumulator matrix D"; CUTLASS CLayout_64xN =
//    ((4,8,4),(2,2,N/8)):((128,1,16),(64,8,512)) over a column-major 64 x N): thread t of the
//    warpgroup, warp w = t / 32, lane l = t % 32, register i < N / 2:
//      row = 16 w + l / 4 + 8 ((i / 2) % 2)       col = 8 (i / 4) + 2 (l % 4) + i % 2
//    (warp w owns rows 16 w .. 16 w + 15, each n8 slice laid out as mma.sync's m16n8 C fragment).
//  * The asm and its operands: CUTLASS SM90_64xNx16_F32BF16BF16_SS: "+f" x N/2 accumulators, "l"
//    descriptors, the scale-d predicate through setp.ne.b32, immediates scale-a = scale-b = 1,
//    tnsp-a / tnsp-b as "n" immediates (transposes are allowed for bf16).
//  * Ordering (PTX wgmma.fence / commit_group / wait_group; "Async proxy"): accessing the
//    accumulators before the wait_group that covers their mma_async is undefined; shared memory
//    written through the generic proxy needs fence.proxy.async before wgmma reads it.
//  Assumed, not stated in those sources in these words (the GPU test binary checks them: a wrong
//  reading shows as a wrong product in the CudaGroupedGemmSm90 tests on an sm_90 device, nt for
//  the first, nn and tn for the second; emulation_wgmma_test runs under the emulation only):
//  * the 128B swizzle XOR uses the bits of the absolute shared-memory address (why the base offset
//    field exists), so a K-major descriptor may start 32, 64 or 96 bytes into a 128-byte row (the
//    k16 steps within a 64-wide K slice) as long as the atom itself is 1024-byte aligned;
//  * the MN-major 128B reading of LBO / SBO above: the PTX examples show MN-major bf16 only for
//    no swizzle, 32B and 64B; the canonical-layout table and CUTLASS make_gmma_desc (swizzled
//    MN-major: LBO = stride<0,1>, the MN-atom stride; SBO = stride<1,1>, the 8-deep K-group
//    stride) agree with it, but no worked 128B example was found;
//  * cp.async writes need fence.proxy.async before wgmma reads them like st.shared writes do
//    (harmless if they do not).
//
// Under MOE_CUDA_EMULATION (core/cuda/emulation_wgmma.h) the calls are warp-collective (all 32
// lanes, warp-uniform descriptors), refuse a thread outside a complete warpgroup, an unsupported
// swizzle (64B, 32B), a nonzero base offset, a 128B-swizzled start that is not in the first row of
// its atom or not 32-byte aligned in it (K-major) or not 1024-byte aligned (MN-major), MN-major
// without swizzle, and an mma_async without a fence since the thread's last wait. Each thread
// queues its mma_asyncs and performs them at the wait_group that retires them, reading shared
// memory then, as the descriptors decode, and writing its own accumulator entries by the map
// above: a kernel that reads accumulators before the wait gets stale values. Shared memory is read
// at the issue too: if what the thread reads changed in between, or one of its own cp.asyncs into
// it is still in flight at the issue or at the wait, the op fails with a race error (on the GPU
// such a kernel computes garbage, sometimes). Descriptor addresses are offsets into the block's
// dynamic shared memory (smem_address()); static shared memory cannot be addressed, and reads
// past the launch's dynamic shared bytes are not caught.
#pragma once
#include <cstdint>

#include "core/cuda/kernel.h"

// wgmma exists only in sm_90a code: the kernels that use it compile to a trap elsewhere.
#if defined(MOE_CUDA_EMULATION) || (defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL))
#define MOE_WGMMA_AVAILABLE 1
#else
#define MOE_WGMMA_AVAILABLE 0
#endif

namespace moe::cuda::wgmma {

enum class Swizzle : uint32_t { none = 0, b128 = 1, b64 = 2, b32 = 3 };

__host__ __device__ constexpr uint64_t desc_encode(uint32_t x) { return uint64_t((x & 0x3FFFFu) >> 4); }
// A descriptor of a K-major operand at shared-memory address `addr` (see smem_address()).
__host__ __device__ constexpr uint64_t make_desc(uint32_t addr, uint32_t lbo_bytes, uint32_t sbo_bytes, Swizzle sw) {
  return desc_encode(addr) | desc_encode(lbo_bytes) << 16 | desc_encode(sbo_bytes) << 32 | uint64_t(sw) << 62;
}

// Which accumulator entry register i of warpgroup thread t (0..127) holds (the map above).
__host__ __device__ constexpr int acc_row(int t, int i) { return (t / 32) * 16 + (t % 32) / 4 + ((i / 2) % 2) * 8; }
__host__ __device__ constexpr int acc_col(int t, int i) { return (i / 4) * 8 + (t % 4) * 2 + i % 2; }

}  // namespace moe::cuda::wgmma

#ifdef MOE_CUDA_EMULATION
#include "core/cuda/emulation_wgmma.h"  // uses the maps above
#endif

namespace moe::cuda::wgmma {

#ifdef MOE_CUDA_EMULATION

inline uint32_t smem_address(const void* p) { return ::moe::cuda::emu_wgmma::smem_address(p); }
inline void fence() { ::moe::cuda::emu_wgmma::fence(); }
inline void commit_group() { ::moe::cuda::emu_wgmma::commit_group(); }
template <int N>
void wait_group() {
  static_assert(N >= 0 && N <= 7, "wgmma.wait_group: 0 <= N <= 7");
  ::moe::cuda::emu_wgmma::wait_group(N);
}
template <int N, bool kTransA = false, bool kTransB = false>
void mma_async(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b, bool accumulate) {
  static_assert(N == 64 || N == 128 || N == 256, "wgmma wrappers: N = 64, 128 or 256");
  ::moe::cuda::emu_wgmma::mma_async(d, N, desc_a, desc_b, accumulate, kTransA, kTransB);
}
template <int R>
void fence_operand(float (&)[R]) {}
inline void fence_proxy_async() {}

#else

__device__ __forceinline__ uint32_t smem_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

template <int R>
__device__ __forceinline__ void fence_operand(float (&d)[R]) {
  MOE_UNROLL
  for (int i = 0; i < R; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

#if MOE_WGMMA_AVAILABLE
__device__ __forceinline__ void fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void commit_group() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wait_group() {
  static_assert(N >= 0 && N <= 7, "wgmma.wait_group: 0 <= N <= 7");
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// The asm of the shapes the kernels use: N = 128 and 256 on the GPU; the emulation takes 64, 128, 256.
template <int N, bool kTransA, bool kTransB>
struct MmaAsync;
template <bool kTransA, bool kTransB>
struct MmaAsync<128, kTransA, kTransB> {
  __device__ static __forceinline__ void run(float (&d)[64], uint64_t desc_a, uint64_t desc_b, bool accumulate) {
    asm volatile(
        "{\n.reg .pred p;\n"
        "setp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20,"
        "%21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39,"
        "%40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58,"
        "%59, %60, %61, %62, %63"
        "}, %64, %65, p, 1, 1, %67, %68;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]),
          "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]),
          "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]),
          "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]),
          "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]),
          "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]),
          "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]),
          "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "l"(desc_a), "l"(desc_b), "r"(int(accumulate)), "n"(int(kTransA)), "n"(int(kTransB)));
  }
};
// N = 256 (grouped_gemm_sm90_persistent.cu's 128 x 256 tiles): 128 accumulators per thread.
template <bool kTransA, bool kTransB>
struct MmaAsync<256, kTransA, kTransB> {
  __device__ static __forceinline__ void run(float (&d)[128], uint64_t desc_a, uint64_t desc_b, bool accumulate) {
    asm volatile(
        "{\n.reg .pred p;\n"
        "setp.ne.b32 p, %130, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31,"
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47,"
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63,"
        "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79,"
        "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95,"
        "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111,"
        "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
        "}, %128, %129, p, 1, 1, %131, %132;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
          "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]),
          "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]),
          "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]),
          "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]),
          "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]),
          "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]),
          "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]),
          "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]),
          "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
        : "l"(desc_a), "l"(desc_b), "r"(int(accumulate)), "n"(int(kTransA)), "n"(int(kTransB)));
  }
};
template <int N, bool kTransA = false, bool kTransB = false>
__device__ __forceinline__ void mma_async(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b, bool accumulate) {
  MmaAsync<N, kTransA, kTransB>::run(d, desc_a, desc_b, accumulate);
}

#else  // not sm_90a: callers are compiled but must not run (they trap)
__device__ __forceinline__ void fence() { __trap(); }
__device__ __forceinline__ void commit_group() { __trap(); }
template <int N>
__device__ __forceinline__ void wait_group() {
  __trap();
}
__device__ __forceinline__ void fence_proxy_async() { __trap(); }
template <int N, bool kTransA = false, bool kTransB = false>
__device__ __forceinline__ void mma_async(float (&)[N / 2], uint64_t, uint64_t, bool) {
  __trap();
}
#endif  // MOE_WGMMA_AVAILABLE

#endif  // MOE_CUDA_EMULATION

}  // namespace moe::cuda::wgmma
