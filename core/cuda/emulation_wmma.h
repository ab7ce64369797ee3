// The emulation's nvcuda::wmma (tensor-core warp matrix API): fragments, load / store / mma / fill
// with CUDA's documented semantics. The API leaves a fragment's element-to-lane mapping
// unspecified, so an emulated fragment holds the whole tile in every lane (x[] row-major).
#pragma once
#ifdef MOE_CUDA_EMULATION

#include <cstdint>
#include <type_traits>

#include "core/dtype.h"

namespace moe::cuda::emu {

unsigned lane_id();
// A warp-collective call: all 32 lanes of a full warp must arrive with the same `uniform` value
// (the arguments CUDA requires to be warp-uniform), else every lane throws naming `what`.
void warp_collective(const char* what, uint64_t uniform);
// CUDA's requirements on a wmma memory operand: a 256-bit aligned pointer and ldm a multiple of
// 16 bytes' worth of elements.
void check_wmma_operand(const char* what, const void* ptr, unsigned ldm, size_t element_bytes);

inline float wmma_to_float(float v) { return v; }
inline float wmma_to_float(::moe::bf16 v) { return ::moe::bf16_to_float(v); }

}  // namespace moe::cuda::emu

namespace nvcuda::wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int m, int n, int k, class T, class Layout = void>
class fragment {
 public:
  static_assert((m == 16 && n == 16 && k == 16) || (m == 32 && n == 8 && k == 16) || (m == 8 && n == 32 && k == 16),
                "wmma: the shapes of 16-bit operands are m16n16k16, m32n8k16 and m8n32k16");
  static constexpr int rows = std::is_same_v<Use, matrix_b> ? k : m;
  static constexpr int cols = std::is_same_v<Use, matrix_a> ? k : n;
  static constexpr int num_elements = rows * cols;
  T x[num_elements];
};

namespace detail {
inline uint64_t operand_id(const void* p, unsigned ldm, unsigned layout) {
  return uint64_t(reinterpret_cast<uintptr_t>(p)) ^ (uint64_t(ldm) << 47) ^ (uint64_t(layout) << 63);
}
}  // namespace detail

// Every lane reads the tile before the rendezvous: a lane whose write the warp (or block) has
// not synchronized with may still be unwritten (poisoned), as on the GPU.
template <class Use, int m, int n, int k, class T, class Layout>
void load_matrix_sync(fragment<Use, m, n, k, T, Layout>& a, const T* p, unsigned ldm) {
  static_assert(!std::is_same_v<Use, accumulator>, "wmma: an accumulator load takes a layout_t");
  using F = fragment<Use, m, n, k, T, Layout>;
  ::moe::cuda::emu::check_wmma_operand("wmma::load_matrix_sync", p, ldm, sizeof(T));
  constexpr bool row = std::is_same_v<Layout, row_major>;
  for (int r = 0; r < F::rows; ++r)
    for (int c = 0; c < F::cols; ++c) a.x[r * F::cols + c] = row ? p[size_t(r) * ldm + c] : p[size_t(c) * ldm + r];
  ::moe::cuda::emu::warp_collective("wmma::load_matrix_sync", detail::operand_id(p, ldm, row ? 0 : 1));
}

template <int m, int n, int k, class T>
void load_matrix_sync(fragment<accumulator, m, n, k, T>& a, const T* p, unsigned ldm, layout_t layout) {
  ::moe::cuda::emu::check_wmma_operand("wmma::load_matrix_sync", p, ldm, sizeof(T));
  for (int r = 0; r < m; ++r)
    for (int c = 0; c < n; ++c)
      a.x[r * n + c] = layout == mem_row_major ? p[size_t(r) * ldm + c] : p[size_t(c) * ldm + r];
  ::moe::cuda::emu::warp_collective("wmma::load_matrix_sync", detail::operand_id(p, ldm, unsigned(layout)));
}

// Each lane writes its share (every 32nd element) after the rendezvous.
template <int m, int n, int k, class T>
void store_matrix_sync(T* p, const fragment<accumulator, m, n, k, T>& a, unsigned ldm, layout_t layout) {
  ::moe::cuda::emu::check_wmma_operand("wmma::store_matrix_sync", p, ldm, sizeof(T));
  ::moe::cuda::emu::warp_collective("wmma::store_matrix_sync", detail::operand_id(p, ldm, unsigned(layout)));
  for (int e = int(::moe::cuda::emu::lane_id()); e < m * n; e += 32) {
    const int r = e / n, c = e % n;
    (layout == mem_row_major ? p[size_t(r) * ldm + c] : p[size_t(c) * ldm + r]) = a.x[e];
  }
}

template <class Use, int m, int n, int k, class T, class Layout, class V>
void fill_fragment(fragment<Use, m, n, k, T, Layout>& a, const V& v) {
  for (auto& e : a.x) {
    if constexpr (std::is_same_v<T, ::moe::bf16>)
      e = ::moe::float_to_bf16(float(v));
    else
      e = T(v);
  }
}

// d = a b + c with fp32 products and sums (d may be c).
template <int m, int n, int k, class Ta, class La, class Tb, class Lb>
void mma_sync(fragment<accumulator, m, n, k, float>& d, const fragment<matrix_a, m, n, k, Ta, La>& a,
              const fragment<matrix_b, m, n, k, Tb, Lb>& b, const fragment<accumulator, m, n, k, float>& c,
              bool satf = false) {
  static_assert(sizeof(Ta) == 2 && sizeof(Tb) == 2, "wmma emulation: 16-bit multiplicands (bf16) only");
  ::moe::cuda::emu::warp_collective("wmma::mma_sync", 0x6d6d615f73796e63ull);
  float out[m * n];
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      float acc = c.x[i * n + j];
      for (int kk = 0; kk < k; ++kk)
        acc += ::moe::cuda::emu::wmma_to_float(a.x[i * k + kk]) * ::moe::cuda::emu::wmma_to_float(b.x[kk * n + j]);
      out[i * n + j] = satf ? (acc != acc ? 0.0f : acc > 1.0f ? 1.0f : acc < 0.0f ? 0.0f : acc) : acc;
    }
  for (int e = 0; e < m * n; ++e) d.x[e] = out[e];
}

}  // namespace nvcuda::wmma

#endif  // MOE_CUDA_EMULATION
