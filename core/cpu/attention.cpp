// Causal scaled dot-product attention on the CPU: per (batch, head), row blocks of queries see only
// the keys up to the block's last row, so the masked upper triangle is (mostly) never computed.
// Forward saves the per-row logsumexp, not P; backward recomputes P block by block from it.
#include "core/cpu/attention.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "core/autograd.h"
#include "core/dispatch.h"

namespace moe {
namespace {

constexpr int64_t kRowBlock = 64;  // query rows per block: bigger GEMMs vs. more skipped masked work

// C[m, n] = alpha * op(A) op(B) + beta * C, row-major.
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda, const float* b,
          int64_t ldb, float beta, float* c, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, int(m), int(n), int(k),
              alpha, a, int(lda), b, int(ldb), beta, c, int(ldc));
}
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha, const double* a, int64_t lda,
          const double* b, int64_t ldb, double beta, double* c, int64_t ldc) {
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, int(m), int(n), int(k),
              alpha, a, int(lda), b, int(ldb), beta, c, int(ldc));
}

// When heads run in parallel, each GEMM must stay on its calling thread: OpenBLAS (pthreads build)
// would otherwise fan every call out to its own pool and oversubscribe the cores. The setting is
// process-wide, so it is restored on scope exit; the trainer calls ops from one thread.
class SingleThreadedBlas {
 public:
  explicit SingleThreadedBlas(bool active) : active_(active), prev_(active ? openblas_get_num_threads() : 1) {
    if (active_) openblas_set_num_threads(1);
  }
  ~SingleThreadedBlas() {
    if (active_) openblas_set_num_threads(prev_);
  }
  SingleThreadedBlas(const SingleThreadedBlas&) = delete;
  SingleThreadedBlas& operator=(const SingleThreadedBlas&) = delete;

 private:
  bool active_;
  int prev_;
};

// Parallel over heads when there are enough of them to feed every thread and enough work to pay
// for waking the team (tiny calls, such as a gradient check's thousands, stay serial); otherwise
// heads run in sequence and BLAS threads each GEMM as it sees fit.
constexpr double kParallelWork = double(1 << 20);  // heads * S^2 * Dh multiply-adds
bool heads_in_parallel(int64_t heads, int64_t S, int64_t D) {
  int threads = omp_get_max_threads();
  return threads > 1 && !omp_in_parallel() && heads >= threads &&
         double(heads) * double(S) * double(S) * double(D) >= kParallelWork;
}

// exp(row[j] - shift) in place over row[0, n), returning the sum. The f32 path is written with GCC
// vector extensions because, under the default -ftrapping-math, GCC will not vectorize any exp
// (glibc's expf vectorizes only under -ffast-math, a polynomial one not at all: its clamp and
// float->int conversion may trap). Cephes' range reduction x = n ln2 + r and degree-7 polynomial:
// max relative error 8e-8 against exp in double over [-87, 1]. Inputs are scores minus their row
// max or logsumexp, so x <= 0; the clamp keeps 2^n a normal float.
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

float exp_shift_sum(float* row, int64_t n, float shift) {
  V8f acc{};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    V8f v;
    std::memcpy(&v, row + j, sizeof v);
    v = exp8(v - shift);
    std::memcpy(row + j, &v, sizeof v);
    acc += v;
  }
  float sum = 0;
  for (int l = 0; l < 8; ++l) sum += acc[l];
  for (; j < n; ++j) sum += (row[j] = exp1(row[j] - shift));
  return sum;
}

// The f64 path is the gradient-check reference: libm's exp.
double exp_shift_sum(double* row, int64_t n, double shift) {
  double sum = 0;
  for (int64_t j = 0; j < n; ++j) sum += (row[j] = std::exp(row[j] - shift));
  return sum;
}

struct Dims {
  int64_t heads, S, D;
  double scale;
};

// One head's forward: o = softmax(scale q k^T + mask) v, lse[r] = log sum_j exp(scale q_r k_j), j <= r.
template <class T>
void head_forward(const Dims& d, const T* q, const T* k, const T* v, T* o, T* lse, T* scores) {
  const int64_t S = d.S, D = d.D;
  for (int64_t r0 = 0; r0 < S; r0 += kRowBlock) {
    int64_t r1 = std::min(S, r0 + kRowBlock), m = r1 - r0, n = r1;  // keys [0, r1) cover the block
    gemm(false, true, m, n, D, T(d.scale), q + r0 * D, D, k, D, T(0), scores, n);
    for (int64_t i = 0; i < m; ++i) {
      T* row = scores + i * n;
      int64_t valid = r0 + i + 1;
      T mx = row[0];
#pragma omp simd reduction(max : mx)
      for (int64_t j = 1; j < valid; ++j) mx = row[j] > mx ? row[j] : mx;
      T sum = exp_shift_sum(row, valid, mx);
      T inv = T(1) / sum;
#pragma omp simd
      for (int64_t j = 0; j < valid; ++j) row[j] *= inv;
      std::fill(row + valid, row + n, T(0));
      lse[r0 + i] = mx + std::log(sum);
    }
    gemm(false, false, m, D, n, T(1), scores, n, v, D, T(0), o + r0 * D, D);
  }
}

// One head's backward from dO, recomputing P from lse. dq, dk, dv are overwritten.
template <class T>
void head_backward(const Dims& d, const T* q, const T* k, const T* v, const T* lse, const T* dout, T* dq, T* dk, T* dv,
                   T* p, T* dp) {
  const int64_t S = d.S, D = d.D;
  const T scale = T(d.scale);
  std::fill(dk, dk + S * D, T(0));
  std::fill(dv, dv + S * D, T(0));
  for (int64_t r0 = 0; r0 < S; r0 += kRowBlock) {
    int64_t r1 = std::min(S, r0 + kRowBlock), m = r1 - r0, n = r1;
    gemm(false, true, m, n, D, scale, q + r0 * D, D, k, D, T(0), p, n);
    for (int64_t i = 0; i < m; ++i) {
      T* row = p + i * n;
      int64_t valid = r0 + i + 1;
      exp_shift_sum(row, valid, lse[r0 + i]);
      std::fill(row + valid, row + n, T(0));
    }
    gemm(true, false, n, D, m, T(1), p, n, dout + r0 * D, D, T(1), dv, D);  // dV += P^T dO
    gemm(false, true, m, n, D, T(1), dout + r0 * D, D, v, D, T(0), dp, n);  // dP = dO V^T
    for (int64_t i = 0; i < m; ++i) {                                       // dS = P (dP - rowsum(dP P))
      T* pr = p + i * n;
      T* dpr = dp + i * n;
      int64_t valid = r0 + i + 1;
      T dot = 0;
#pragma omp simd reduction(+ : dot)
      for (int64_t j = 0; j < valid; ++j) dot += pr[j] * dpr[j];
#pragma omp simd
      for (int64_t j = 0; j < valid; ++j) dpr[j] = pr[j] * (dpr[j] - dot);
      std::fill(dpr + valid, dpr + n, T(0));
    }
    gemm(false, false, m, D, n, scale, dp, n, k, D, T(0), dq + r0 * D, D);  // dQ = scale dS K
    gemm(true, false, n, D, m, scale, dp, n, q + r0 * D, D, T(1), dk, D);   // dK += scale dS^T Q
  }
}

template <class T>
void attention_forward(const Dims& d, const T* q, const T* k, const T* v, T* o, T* lse) {
  const int64_t HS = d.S * d.D;
  bool par = heads_in_parallel(d.heads, d.S, d.D);
  SingleThreadedBlas blas_guard(par);
#pragma omp parallel if (par)
  {
    std::vector<T> scores(size_t(std::min(kRowBlock, d.S) * d.S));  // per-thread scratch
#pragma omp for schedule(static)
    for (int64_t h = 0; h < d.heads; ++h)
      head_forward(d, q + h * HS, k + h * HS, v + h * HS, o + h * HS, lse + h * d.S, scores.data());
  }
}

template <class T>
void attention_backward(const Dims& d, const T* q, const T* k, const T* v, const T* lse, const T* dout, T* dq, T* dk,
                        T* dv) {
  const int64_t HS = d.S * d.D;
  bool par = heads_in_parallel(d.heads, d.S, d.D);
  SingleThreadedBlas blas_guard(par);
#pragma omp parallel if (par)
  {
    size_t n = size_t(std::min(kRowBlock, d.S) * d.S);
    std::vector<T> p(n), dp(n);
#pragma omp for schedule(static)
    for (int64_t h = 0; h < d.heads; ++h)
      head_backward(d, q + h * HS, k + h * HS, v + h * HS, lse + h * d.S, dout + h * HS, dq + h * HS, dk + h * HS,
                    dv + h * HS, p.data(), dp.data());
  }
}

}  // namespace

Tensor causal_attention(const Tensor& q, const Tensor& k, const Tensor& v) {
  MOE_CHECK(q.dim() == 4, "causal_attention", "q must be [B, H, S, Dh], got ", q.shape_str());
  MOE_CHECK(k.shape() == q.shape() && v.shape() == q.shape(), "causal_attention", "q ", q.shape_str(), ", k ",
            k.shape_str(), " and v ", v.shape_str(), " must have the same shape");
  MOE_CHECK(k.dtype() == q.dtype() && v.dtype() == q.dtype(), "causal_attention", "dtypes differ: q ",
            dtype_name(q.dtype()), ", k ", dtype_name(k.dtype()), ", v ", dtype_name(v.dtype()));
  MOE_CHECK(q.shape()[3] >= 1, "causal_attention", "head dim must be >= 1, got q ", q.shape_str());
  Dims d{q.shape()[0] * q.shape()[1], q.shape()[2], q.shape()[3], 1.0 / std::sqrt(double(q.shape()[3]))};
  Tensor qc = q.contiguous().detach(), kc = k.contiguous().detach(), vc = v.contiguous().detach();
  Tensor out = Tensor::empty(q.shape(), q.dtype());
  Tensor lse = Tensor::empty({q.shape()[0], q.shape()[1], q.shape()[2]}, q.dtype());
  if (out.numel() > 0)
    dispatch_float(q.dtype(), "causal_attention", [&](auto tag) {
      using T = decltype(tag);
      attention_forward<T>(d, qc.data<T>(), kc.data<T>(), vc.data<T>(), out.data<T>(), lse.data<T>());
    });
  if (needs_grad({q, k, v})) {
    Tensor qs = q, ks = k, vs = v;
    record("causal_attention", {out}, [qs, ks, vs, qc, kc, vc, lse, d](const std::vector<Tensor>& g) {
      Tensor go = g[0].contiguous();
      Tensor dq = Tensor::empty(qc.shape(), qc.dtype()), dk = Tensor::empty(qc.shape(), qc.dtype()),
             dv = Tensor::empty(qc.shape(), qc.dtype());
      if (go.numel() > 0)
        dispatch_float(qc.dtype(), "causal_attention backward", [&](auto tag) {
          using T = decltype(tag);
          attention_backward<T>(d, qc.data<T>(), kc.data<T>(), vc.data<T>(), lse.data<T>(), go.data<T>(), dq.data<T>(),
                                dk.data<T>(), dv.data<T>());
        });
      accumulate_grad(qs, dq);
      accumulate_grad(ks, dk);
      accumulate_grad(vs, dv);
    });
  }
  return out;
}

}  // namespace moe
