// Helpers of the kernel tests: seeded random inputs, bf16 round trips, and an element-wise
// comparison with |got - want| <= atol + rtol * |want| that names the first failing index.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "core/cuda/memory.h"
#include "core/dtype.h"
#include "tests/cuda/test_seed.h"

namespace moe::test {

// Tolerances per dtype: fp32 kernels against a double reference, bf16 kernels (fp32 math, bf16
// storage: 8 mantissa bits) against a double reference on the same bf16-rounded inputs.
constexpr double kF32Atol = 1e-5, kF32Rtol = 1e-5;
constexpr double kBf16Atol = 1e-2, kBf16Rtol = 1e-2;

inline std::vector<float> random_normal(size_t n, unsigned seed, float scale = 1.0f) {
  std::mt19937 gen(uint32_t(test_seed(seed)));  // fresh per run: tests/cuda/test_seed.h
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(gen);
  return v;
}
inline std::vector<bf16> to_bf16(const std::vector<float>& v) {
  std::vector<bf16> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = float_to_bf16(v[i]);
  return out;
}
inline std::vector<float> to_f32(const std::vector<bf16>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = bf16_to_float(v[i]);
  return out;
}
inline std::vector<float> to_f32(const std::vector<float>& v) { return v; }
// The values a bf16 kernel actually sees.
inline std::vector<float> round_bf16(const std::vector<float>& v) { return to_f32(to_bf16(v)); }

// A device copy of v as T (float, or bf16 rounded to nearest even).
template <class T>
cuda::DeviceBuffer<T> upload(const std::vector<float>& v) {
  if constexpr (std::is_same_v<T, bf16>) return cuda::DeviceBuffer<T>(to_bf16(v));
  else return cuda::DeviceBuffer<T>(v);
}
template <class T>
constexpr double atol_for() { return std::is_same_v<T, bf16> ? kBf16Atol : kF32Atol; }
template <class T>
constexpr double rtol_for() { return std::is_same_v<T, bf16> ? kBf16Rtol : kF32Rtol; }

template <class G, class W>
::testing::AssertionResult all_near(const std::vector<G>& got, const std::vector<W>& want, double atol, double rtol) {
  if (got.size() != want.size())
    return ::testing::AssertionFailure() << "size " << got.size() << " != expected " << want.size();
  for (size_t i = 0; i < got.size(); ++i) {
    double g = double(got[i]), w = double(want[i]);
    if (!(std::abs(g - w) <= atol + rtol * std::abs(w)))
      return ::testing::AssertionFailure() << "element " << i << ": got " << g << ", expected " << w << " (atol "
                                           << atol << ", rtol " << rtol << ")";
  }
  return ::testing::AssertionSuccess();
}

}  // namespace moe::test
