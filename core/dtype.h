// Element types a Tensor can hold, and bf16 <-> fp32 conversion.
// f64 exists so every op has a double-precision path for gradient checks.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace moe {

enum class DType : uint8_t { f32, f64, bf16, i32, i64 };

size_t dtype_size(DType dt);
const char* dtype_name(DType dt);
inline bool is_floating(DType dt) { return dt == DType::f32 || dt == DType::f64 || dt == DType::bf16; }

// bf16 is storage only on the CPU: kernels compute in fp32 and convert at the edges.
struct bf16 {
  uint16_t bits = 0;
};

inline float bf16_to_float(bf16 v) {
  uint32_t u = uint32_t(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Round to nearest even, the rounding cuda_bf16.h's __float2bfloat16 uses; NaN stays NaN.
inline bf16 float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{uint16_t((u >> 16) | 0x40)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16{uint16_t(u >> 16)};
}

template <class T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::f32; }
template <> constexpr DType dtype_of<double>() { return DType::f64; }
template <> constexpr DType dtype_of<bf16>() { return DType::bf16; }
template <> constexpr DType dtype_of<int32_t>() { return DType::i32; }
template <> constexpr DType dtype_of<int64_t>() { return DType::i64; }

}  // namespace moe
