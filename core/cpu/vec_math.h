// Vectorized float exp (8 lanes, GCC vector extensions) and the SwiGLU row kernels built on it,
// shared by attention's softmax, the activations and the fused expert FFN.
#pragma once
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace moe::vec {

// Under the default -ftrapping-math GCC will not vectorize any exp (glibc's expf vectorizes only
// under -ffast-math, a polynomial one not at all: its clamp and float->int conversion may trap),
// hence vector extensions. Cephes' range reduction x = n ln2 + r and degree-7 polynomial: max
// relative error 8e-8 against exp in double over [-87, 88]; inputs are clamped to that range, so
// 2^n stays a normal float (exp(-100) gives exp(-87), about 1.6e-38).
using V8f = float __attribute__((vector_size(32)));
using V8i = int32_t __attribute__((vector_size(32)));
constexpr float kLog2e = 1.44269504088896341f, kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;

template <class F>
inline F exp_polynomial(F x, F n) {
  F r = x - n * kLn2Hi - n * kLn2Lo;
  F p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  return p * r * r + r + 1.0f;
}

inline V8f exp8(V8f x) {
  x = x < -87.0f ? V8f{} - 87.0f : x;
  x = x > 88.0f ? V8f{} + 88.0f : x;
  V8f t = x * kLog2e + 0.5f;
  V8i n = __builtin_convertvector(t, V8i);
  n += (__builtin_convertvector(n, V8f) > t);  // truncation to floor: the mask is -1 where it rounded up
  return exp_polynomial(x, __builtin_convertvector(n, V8f)) * (V8f)((n + 127) << 23);
}

inline float exp1(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  float n = std::floor(x * kLog2e + 0.5f);
  return exp_polynomial(x, n) * std::bit_cast<float>((int32_t(n) + 127) << 23);
}

inline V8f load8(const float* p) {
  V8f v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store8(float* p, V8f v) { std::memcpy(p, &v, sizeof v); }

// sum_j exp(x[j] - shift) over n elements, x unchanged.
inline float sum_exp_shift(const float* x, int64_t n, float shift) {
  V8f acc{};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) acc += exp8(load8(x + j) - shift);
  float sum = 0;
  for (int l = 0; l < 8; ++l) sum += acc[l];
  for (; j < n; ++j) sum += exp1(x[j] - shift);
  return sum;
}
inline double sum_exp_shift(const double* x, int64_t n, double shift) {
  double sum = 0;
  for (int64_t j = 0; j < n; ++j) sum += std::exp(x[j] - shift);
  return sum;
}

// out[j] = exp(x[j] - shift) * scale over n elements (out may alias x).
inline void exp_shift_scale(const float* x, float* out, int64_t n, float shift, float scale) {
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) store8(out + j, exp8(load8(x + j) - shift) * scale);
  for (; j < n; ++j) out[j] = exp1(x[j] - shift) * scale;
}
inline void exp_shift_scale(const double* x, double* out, int64_t n, double shift, double scale) {
  for (int64_t j = 0; j < n; ++j) out[j] = std::exp(x[j] - shift) * scale;
}

// h = silu(a) * u = a sigmoid(a) u over n elements. f32 uses exp8; f64 (the gradient-check
// reference) uses libm.
inline void swiglu_forward(const float* a, const float* u, float* h, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    V8f x = load8(a + i);
    store8(h + i, x / (1.0f + exp8(-x)) * load8(u + i));
  }
  for (; i < n; ++i) h[i] = a[i] / (1.0f + exp1(-a[i])) * u[i];
}
inline void swiglu_forward(const double* a, const double* u, double* h, int64_t n) {
  for (int64_t i = 0; i < n; ++i) h[i] = a[i] / (1.0 + std::exp(-a[i])) * u[i];
}

// The fused expert FFN keeps s = sigmoid(a) from its forward, so its backward needs no exp:
// s[i] = sigmoid(a[i]) and h[i] = a[i] s[i] u[i].
inline void sigmoid_swiglu(const float* a, const float* u, float* s, float* h, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    V8f x = load8(a + i), si = 1.0f / (1.0f + exp8(-x));
    store8(s + i, si);
    store8(h + i, x * si * load8(u + i));
  }
  for (; i < n; ++i) {
    s[i] = 1.0f / (1.0f + exp1(-a[i]));
    h[i] = a[i] * s[i] * u[i];
  }
}
inline void sigmoid_swiglu(const double* a, const double* u, double* s, double* h, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    s[i] = 1.0 / (1.0 + std::exp(-a[i]));
    h[i] = a[i] * s[i] * u[i];
  }
}

// h = a s u from a kept s (bit-identical to sigmoid_swiglu's h).
template <class T>
inline void swiglu_from_sigmoid(const T* a, const T* u, const T* s, T* h, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) h[i] = a[i] * s[i] * u[i];
}

// From g = dL/dh and a kept s = sigmoid(a): da = g u s (1 + a (1 - s)), du = g a s. da may alias g.
template <class T>
inline void swiglu_backward_from_sigmoid(const T* g, const T* a, const T* u, const T* s, T* da, T* du, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    T gi = g[i], x = a[i], si = s[i];
    da[i] = gi * u[i] * si * (T(1) + x * (T(1) - si));
    du[i] = gi * x * si;
  }
}

// From g = dL/dh: da = g u s (1 + a (1 - s)), du = g a s, s = sigmoid(a). da or du may alias g.
inline void swiglu_backward(const float* g, const float* a, const float* u, float* da, float* du, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    V8f x = load8(a + i), gi = load8(g + i), s = 1.0f / (1.0f + exp8(-x));
    V8f ui = load8(u + i);
    store8(da + i, gi * ui * s * (1.0f + x * (1.0f - s)));
    store8(du + i, gi * x * s);
  }
  for (; i < n; ++i) {
    float x = a[i], gi = g[i], s = 1.0f / (1.0f + exp1(-x));
    float ui = u[i];
    da[i] = gi * ui * s * (1.0f + x * (1.0f - s));
    du[i] = gi * x * s;
  }
}
inline void swiglu_backward(const double* g, const double* a, const double* u, double* da, double* du, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    double x = a[i], gi = g[i], s = 1.0 / (1.0 + std::exp(-x)), ui = u[i];
    da[i] = gi * ui * s * (1.0 + x * (1.0 - s));
    du[i] = gi * x * s;
  }
}

}  // namespace moe::vec
