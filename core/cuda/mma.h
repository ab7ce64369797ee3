// Warp-level tensor-core products with a documented register layout: PTX
// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 (bf16 operands, fp32 accumulators) and
// ldmatrix.sync.aligned.m8n8.x4{.trans}.shared.b16, as inline PTX on the GPU (sm_80+). Unlike
// nvcuda::wmma, every lane knows which matrix entries its registers hold, so a kernel can work on
// accumulators in registers (e.g. the online softmax of flash attention).
//
// The fragment maps, from the PTX ISA, section 9.7.14.5.8 "Matrix Fragments for mma.m16n8k16
// with floating point type" (Figures 79 A, 81 B, 83 C/D), with groupID g = lane >> 2 and
// threadID_in_group t = lane & 3; a register holding two bf16 keeps the lower column / row index
// in its low 16 bits:
//   A (16 x 16, row):  a[0] = A(g, 2t..2t+1)      a[1] = A(g+8, 2t..2t+1)
//                      a[2] = A(g, 2t+8..2t+9)    a[3] = A(g+8, 2t+8..2t+9)
//   B (16 x 8, col):   b[0] = B(2t..2t+1, g)      b[1] = B(2t+8..2t+9, g)
//   C, D (16 x 8):     c[0], c[1] = C(g, 2t), C(g, 2t+1)    c[2], c[3] = C(g+8, 2t), C(g+8, 2t+1)
// ldmatrix (PTX ISA, "Warp-level matrix load instruction: ldmatrix"): for .x4, lanes 8i..8i+7
// give the (16-byte aligned) addresses of rows 0..7 of matrix i, and register r[i] of lane l
// receives row l >> 2, columns 2 (l & 3) and 2 (l & 3) + 1 of matrix i; with .trans, rows and
// columns swap (r[i] holds rows 2 (l & 3) and 2 (l & 3) + 1 of column l >> 2).
//
// Under MOE_CUDA_EMULATION both are warp-collective calls over emu::warp_gather: all 32 lanes
// publish their registers (or row addresses), else every lane throws naming the op, and each lane
// computes its own outputs from the maps above (fp32 products and sums for mma).
#pragma once
#include <cstdint>

#include "core/cuda/kernel.h"

#ifdef MOE_CUDA_EMULATION
#include <cstring>

#include "core/cuda/emulation.h"
#include "core/error.h"
#endif

namespace moe::cuda::mma {

// Which entry each lane's registers hold (the table above); i is the register (a, b) or the
// element (c), h the half of a bf16 pair (0 = low bits).
__host__ __device__ constexpr int a_row(int lane, int i) { return (lane >> 2) + (i & 1) * 8; }
__host__ __device__ constexpr int a_col(int lane, int i, int h) { return (lane & 3) * 2 + h + (i >> 1) * 8; }
__host__ __device__ constexpr int b_row(int lane, int i, int h) { return (lane & 3) * 2 + h + i * 8; }
__host__ __device__ constexpr int b_col(int lane) { return lane >> 2; }
__host__ __device__ constexpr int c_row(int lane, int i) { return (lane >> 2) + (i >> 1) * 8; }
__host__ __device__ constexpr int c_col(int lane, int i) { return (lane & 3) * 2 + (i & 1); }

// Two fp32 rounded to bf16 (nearest even) in one register, `lo` in the low 16 bits.
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
#ifdef MOE_CUDA_EMULATION
  return uint32_t(::moe::float_to_bf16(lo).bits) | uint32_t(::moe::float_to_bf16(hi).bits) << 16;
#else
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (lo) in the low half
  return *reinterpret_cast<const uint32_t*>(&v);
#endif
}
__device__ __forceinline__ float bf16x2_lo(uint32_t v) { return __uint_as_float(v << 16); }
__device__ __forceinline__ float bf16x2_hi(uint32_t v) { return __uint_as_float(v & 0xffff0000u); }

#ifdef MOE_CUDA_EMULATION

namespace detail {
inline uint16_t half_of(uint32_t v, int h) { return uint16_t(h ? v >> 16 : v & 0xffffu); }
inline float bf16_bits_to_float(uint16_t b) { return __uint_as_float(uint32_t(b) << 16); }
}  // namespace detail

// d = a b + c for one 16 x 16 by 16 x 8 tile (d may alias c).
inline void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const float (&c)[4]) {
  const uint64_t mine[3] = {uint64_t(a[0]) | uint64_t(a[1]) << 32, uint64_t(a[2]) | uint64_t(a[3]) << 32,
                            uint64_t(b[0]) | uint64_t(b[1]) << 32};
  uint64_t all[3 * 32];
  ::moe::cuda::emu::warp_gather("mma.sync.m16n8k16", mine, 3, all);
  auto a_reg = [&](int lane, int i) { return uint32_t(all[(i >> 1) * 32 + lane] >> (i & 1) * 32); };
  auto b_reg = [&](int lane, int i) { return uint32_t(all[2 * 32 + lane] >> i * 32); };
  const int lane = int(::moe::cuda::emu::lane_id());
  float out[4];
  for (int e = 0; e < 4; ++e) {
    const int row = c_row(lane, e), col = c_col(lane, e);
    float acc = c[e];
    for (int k = 0; k < 16; ++k) {
      // The lane and register holding A(row, k) and B(k, col), inverting the maps above.
      const int ai = (row >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0), al = (row & 7) * 4 + (k & 7) / 2;
      const int bi = k >= 8 ? 1 : 0, bl = col * 4 + (k & 7) / 2;
      acc += detail::bf16_bits_to_float(detail::half_of(a_reg(al, ai), k & 1)) *
             detail::bf16_bits_to_float(detail::half_of(b_reg(bl, bi), k & 1));
    }
    out[e] = acc;
  }
  for (int e = 0; e < 4; ++e) d[e] = out[e];
}

namespace detail {
// Every lane reads its shares after all addresses are known, then the warp meets once more so no
// lane's later store can land before another lane's read (the instruction is one warp-wide load).
inline void ldmatrix_x4(uint32_t (&r)[4], const void* row_address, bool trans, const char* what) {
  const uint64_t mine = uint64_t(reinterpret_cast<uintptr_t>(row_address));
  uint64_t all[32];
  ::moe::cuda::emu::warp_gather(what, &mine, 1, all);
  for (int l = 0; l < 32; ++l)
    if (all[l] % 16 != 0) MOE_FAIL("cuda emulation", what, ": lane ", l, "'s row address is not 16-byte aligned");
  const int lane = int(::moe::cuda::emu::lane_id()), g = lane >> 2, t = lane & 3;
  auto at = [&](int matrix, int row, int col) {
    uint16_t v;
    std::memcpy(&v, reinterpret_cast<const unsigned char*>(uintptr_t(all[matrix * 8 + row])) + 2 * col, 2);
    return uint32_t(v);
  };
  for (int i = 0; i < 4; ++i)
    r[i] = trans ? at(i, 2 * t, g) | at(i, 2 * t + 1, g) << 16 : at(i, g, 2 * t) | at(i, g, 2 * t + 1) << 16;
  ::moe::cuda::emu::warp_gather(what, &mine, 1, all);
}
}  // namespace detail

inline void ldmatrix_x4(uint32_t (&r)[4], const void* row_address) {
  detail::ldmatrix_x4(r, row_address, false, "ldmatrix.x4");
}
inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row_address) {
  detail::ldmatrix_x4(r, row_address, true, "ldmatrix.x4.trans");
}

#else  // the GPU: inline PTX (sm_80 and later)

__device__ __forceinline__ void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                               const float (&c)[4]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%10, %11, %12, %13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
        "f"(c[3]));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row_address) {
  const unsigned s = unsigned(__cvta_generic_to_shared(row_address));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row_address) {
  const unsigned s = unsigned(__cvta_generic_to_shared(row_address));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
}

#endif  // MOE_CUDA_EMULATION

}  // namespace moe::cuda::mma
