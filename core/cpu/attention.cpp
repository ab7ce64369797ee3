// Causal scaled dot-product attention on the CPU: per (batch, head), row blocks of queries see only
// the keys up to the block's last row, so the masked upper triangle is (mostly) never computed.
// Training keeps P when it is small (else the per-row logsumexp, and backward recomputes P).
#include "core/cpu/attention.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "core/autograd.h"
#include "core/device.h"
#include "core/cpu/blas_threads.h"
#include "core/cpu/vec_math.h"
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

// Parallel over heads when there are enough of them to feed every thread and enough work to pay
// for waking the team (tiny calls, such as a gradient check's thousands, stay serial); otherwise
// heads run in sequence and BLAS threads each GEMM as it sees fit.
constexpr double kParallelWork = double(1 << 20);  // heads * S^2 * Dh multiply-adds
bool heads_in_parallel(int64_t heads, int64_t S, int64_t D) {
  return tasks_in_parallel(long(heads), double(heads) * double(S) * double(S) * double(D), kParallelWork);
}

// exp(row[j] - shift) in place over row[0, n), returning the sum (f32: vec::exp8, see vec_math.h).
using vec::exp1;
using vec::exp8;
using vec::V8f;

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
  int64_t B, H, S, D;
  double scale;
};

// Where head (b, h) of a logical [B, H, S, Dh] tensor lives: element (b, h, s, i) is at
// b * batch + h * head + s * row + i. Row-major [B, H, S, Dh] has (H S Dh, S Dh, Dh); the
// [B, S, H, Dh] layout of a projection's output has (S H Dh, Dh, H Dh): each head is then a
// matrix with leading dimension H Dh, which BLAS reads in place.
struct Layout {
  int64_t batch, head, row;
  int64_t at(int64_t b, int64_t h) const { return b * batch + h * head; }
};

// The layout of a [B, H, S, Dh] view whose last dim is unit-stride and whose rows do not overlap
// (row stride >= Dh, as BLAS needs lda >= Dh); false for anything else (the caller copies).
bool strided_layout(const Tensor& t, Layout& l) {
  const Shape& st = t.strides();
  const int64_t D = t.shape()[3];
  if (st[3] != 1 && D != 1) return false;
  l = Layout{st[0], st[1], st[2]};
  if (t.shape()[2] == 1) l.row = std::max<int64_t>(l.row, D);  // one row: BLAS ignores its stride
  return l.row >= D;
}

// One head's forward: o = softmax(scale q k^T + mask) v, lse[r] = log sum_j exp(scale q_r k_j), j <= r.
// q, k, v, o are [S, D] matrices with leading dimensions lq, lk, lv, lo.
// When `saved` is given, each block's P [m, n] is written there, blocks back to back
// (saved_probs_per_head elements), for the backward to reuse instead of recomputing it.
template <class T>
void head_forward(const Dims& d, const T* q, int64_t lq, const T* k, int64_t lk, const T* v, int64_t lv, T* o,
                  int64_t lo, T* lse, T* scratch, T* saved) {
  const int64_t S = d.S, D = d.D;
  for (int64_t r0 = 0; r0 < S; r0 += kRowBlock) {
    int64_t r1 = std::min(S, r0 + kRowBlock), m = r1 - r0, n = r1;  // keys [0, r1) cover the block
    T* scores = saved ? saved : scratch;
    if (saved) saved += m * n;
    gemm(false, true, m, n, D, T(d.scale), q + r0 * lq, lq, k, lk, T(0), scores, n);
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
    gemm(false, false, m, D, n, T(1), scores, n, v, lv, T(0), o + r0 * lo, lo);
  }
}

// One head's backward from dO, recomputing P from lse. dq, dk, dv are overwritten. q, k, v have
// leading dimensions lq, lk, lv; dO and the three grads share lg.
// With `saved` (the forward's P blocks), P is read from there instead of recomputed.
template <class T>
void head_backward(const Dims& d, const T* q, int64_t lq, const T* k, int64_t lk, const T* v, int64_t lv, const T* lse,
                   const T* dout, T* dq, T* dk, T* dv, int64_t lg, T* scratch, T* dp, const T* saved) {
  const int64_t S = d.S, D = d.D;
  const T scale = T(d.scale);
  for (int64_t r = 0; r < S; ++r) {
    std::fill(dk + r * lg, dk + r * lg + D, T(0));
    std::fill(dv + r * lg, dv + r * lg + D, T(0));
  }
  for (int64_t r0 = 0; r0 < S; r0 += kRowBlock) {
    int64_t r1 = std::min(S, r0 + kRowBlock), m = r1 - r0, n = r1;
    const T* p = saved;
    if (saved) {
      saved += m * n;
    } else {
      gemm(false, true, m, n, D, scale, q + r0 * lq, lq, k, lk, T(0), scratch, n);
      for (int64_t i = 0; i < m; ++i) {
        T* row = scratch + i * n;
        int64_t valid = r0 + i + 1;
        exp_shift_sum(row, valid, lse[r0 + i]);
        std::fill(row + valid, row + n, T(0));
      }
      p = scratch;
    }
    gemm(true, false, n, D, m, T(1), p, n, dout + r0 * lg, lg, T(1), dv, lg);  // dV += P^T dO
    gemm(false, true, m, n, D, T(1), dout + r0 * lg, lg, v, lv, T(0), dp, n);  // dP = dO V^T
    for (int64_t i = 0; i < m; ++i) {                                          // dS = P (dP - rowsum(dP P))
      const T* pr = p + i * n;
      T* dpr = dp + i * n;
      int64_t valid = r0 + i + 1;
      T dot = 0;
#pragma omp simd reduction(+ : dot)
      for (int64_t j = 0; j < valid; ++j) dot += pr[j] * dpr[j];
#pragma omp simd
      for (int64_t j = 0; j < valid; ++j) dpr[j] = pr[j] * (dpr[j] - dot);
      std::fill(dpr + valid, dpr + n, T(0));
    }
    gemm(false, false, m, D, n, scale, dp, n, k, lk, T(0), dq + r0 * lg, lg);  // dQ = scale dS K
    gemm(true, false, n, D, m, scale, dp, n, q + r0 * lq, lq, T(1), dk, lg);   // dK += scale dS^T Q
  }
}

// q, k, v and the output o in their layouts; lse is contiguous [B, H, S].
struct Operands {
  Layout q, k, v, o;
};

// Elements of one head's saved P: its row blocks [m, n] back to back.
int64_t saved_probs_per_head(int64_t S) {
  int64_t total = 0;
  for (int64_t r0 = 0; r0 < S; r0 += kRowBlock) total += (std::min(S, r0 + kRowBlock) - r0) * std::min(S, r0 + kRowBlock);
  return total;
}

std::atomic<int64_t> g_saved_probs_budget{int64_t(64) << 20};

template <class T>
void attention_forward(const Dims& d, const Operands& l, const T* q, const T* k, const T* v, T* o, T* lse, T* saved) {
  const int64_t heads = d.B * d.H;
  bool par = heads_in_parallel(heads, d.S, d.D);
  SingleThreadedBlas blas_guard(par);
#pragma omp parallel if (par)
  {
    std::vector<T> scores(size_t(std::min(kRowBlock, d.S) * d.S));  // per-thread scratch
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < heads; ++bh) {
      int64_t b = bh / d.H, h = bh % d.H;
      head_forward(d, q + l.q.at(b, h), l.q.row, k + l.k.at(b, h), l.k.row, v + l.v.at(b, h), l.v.row,
                   o + l.o.at(b, h), l.o.row, lse + bh * d.S, scores.data(),
                   saved ? saved + bh * saved_probs_per_head(d.S) : nullptr);
    }
  }
}

// dO and the gradients dq, dk, dv share the layout g; q, k, v have theirs (l.o is unused).
template <class T>
void attention_backward(const Dims& d, const Operands& l, const Layout& g, const T* q, const T* k, const T* v,
                        const T* lse, const T* dout, T* dq, T* dk, T* dv, const T* saved) {
  const int64_t heads = d.B * d.H;
  bool par = heads_in_parallel(heads, d.S, d.D);
  SingleThreadedBlas blas_guard(par);
#pragma omp parallel if (par)
  {
    size_t n = size_t(std::min(kRowBlock, d.S) * d.S);
    std::vector<T> p(n), dp(n);
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < heads; ++bh) {
      int64_t b = bh / d.H, h = bh % d.H, at = g.at(b, h);
      head_backward(d, q + l.q.at(b, h), l.q.row, k + l.k.at(b, h), l.k.row, v + l.v.at(b, h), l.v.row,
                    lse + bh * d.S, dout + at, dq + at, dk + at, dv + at, g.row, p.data(), dp.data(),
                    saved ? saved + bh * saved_probs_per_head(d.S) : nullptr);
    }
  }
}

// The layout of a fresh contiguous tensor holding a logical [B, H, S, Dh] operand: bshd says the
// memory is [B, S, H, Dh].
Layout fresh_layout(const Dims& d, bool bshd) {
  return bshd ? Layout{d.S * d.H * d.D, d.D, d.H * d.D} : Layout{d.H * d.S * d.D, d.S * d.D, d.D};
}

// Both entry points. q, k, v are the caller's tensors; bshd says they are [B, S, H, Dh] (else
// [B, H, S, Dh]). The kernels see detached logical [B, H, S, Dh] views; out and the input grads
// are fresh tensors in the caller's layout, so no transpose node or copy sits on the tape.
Tensor attention_impl(const Tensor& q, const Tensor& k, const Tensor& v, bool bshd, const char* op) {
  auto logical = [bshd](const Tensor& t) { return bshd ? t.detach().transpose(1, 2) : t.detach(); };
  const Shape lshape = logical(q).shape();
  Dims d{lshape[0], lshape[1], lshape[2], lshape[3], 1.0 / std::sqrt(double(lshape[3]))};
  const Shape caller = q.shape();
  // Inputs BLAS can read in place are used as they are; others are copied once into the
  // caller's layout.
  Operands l;
  auto operand = [&](const Tensor& t, Layout& lay) {
    Tensor x = logical(t);
    if (strided_layout(x, lay)) return x;
    Tensor c = Tensor::empty(caller, t.dtype());
    logical(c).copy_(x);
    lay = fresh_layout(d, bshd);
    return logical(c);
  };
  Tensor qc = operand(q, l.q), kc = operand(k, l.k), vc = operand(v, l.v);
  l.o = fresh_layout(d, bshd);
  Tensor out = Tensor::empty(caller, q.dtype());
  Tensor lse = Tensor::empty({d.B, d.H, d.S}, q.dtype());
  // For training, P is kept when it fits the budget (short sequences: 3 MiB per quickstart layer),
  // which saves the backward one of its five GEMMs per block and the exp pass.
  const bool grad = needs_grad({q, k, v});
  const int64_t saved_elems = d.B * d.H * saved_probs_per_head(d.S);
  Tensor saved;
  if (grad && out.numel() > 0 &&
      double(saved_elems) * double(dtype_size(q.dtype())) <= double(g_saved_probs_budget.load()))
    saved = Tensor::empty({saved_elems}, q.dtype());
  if (out.numel() > 0)
    dispatch_float(q.dtype(), op, [&](auto tag) {
      using T = decltype(tag);
      attention_forward<T>(d, l, qc.data<T>(), kc.data<T>(), vc.data<T>(), out.data<T>(), lse.data<T>(),
                           saved.defined() ? saved.data<T>() : nullptr);
    });
  if (grad) {
    Tensor qs = q, ks = k, vs = v;
    record(op, {out}, [qs, ks, vs, qc, kc, vc, l, lse, saved, d, bshd, op](const std::vector<Tensor>& g) {
      Tensor go = g[0].contiguous();
      Tensor dq = Tensor::empty(go.shape(), go.dtype()), dk = Tensor::empty(go.shape(), go.dtype()),
             dv = Tensor::empty(go.shape(), go.dtype());
      if (go.numel() > 0)
        dispatch_float(go.dtype(), op, [&](auto tag) {
          using T = decltype(tag);
          attention_backward<T>(d, l, fresh_layout(d, bshd), qc.data<T>(), kc.data<T>(), vc.data<T>(), lse.data<T>(),
                                go.data<T>(), dq.data<T>(), dk.data<T>(), dv.data<T>(),
                                saved.defined() ? saved.data<T>() : nullptr);
        });
      accumulate_grad(qs, dq);
      accumulate_grad(ks, dk);
      accumulate_grad(vs, dv);
    });
  }
  return out;
}

void check_inputs(const Tensor& q, const Tensor& k, const Tensor& v, const char* op, const char* layout) {
  MOE_CHECK(q.dim() == 4, op, "q must be ", layout, ", got ", q.shape_str());
  MOE_CHECK(k.shape() == q.shape() && v.shape() == q.shape(), op, "q ", q.shape_str(), ", k ", k.shape_str(),
            " and v ", v.shape_str(), " must have the same shape");
  MOE_CHECK(k.dtype() == q.dtype() && v.dtype() == q.dtype(), op, "dtypes differ: q ", dtype_name(q.dtype()), ", k ",
            dtype_name(k.dtype()), ", v ", dtype_name(v.dtype()));
  MOE_CHECK(q.shape()[3] >= 1, op, "head dim must be >= 1, got q ", q.shape_str());
}

}  // namespace

Tensor causal_attention(const Tensor& q, const Tensor& k, const Tensor& v) {
  // On the device: the same kernels read [B, S, H, Dh], which transposed views give for free.
  if (common_device("causal_attention", {q, k, v}) == Device::cuda) {
    check_inputs(q, k, v, "causal_attention", "[B, H, S, Dh]");
    return cuda_backend("causal_attention")
        .causal_attention_bshd(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        .transpose(1, 2);
  }
  check_inputs(q, k, v, "causal_attention", "[B, H, S, Dh]");
  return attention_impl(q, k, v, false, "causal_attention");
}

Tensor causal_attention_bshd(const Tensor& q, const Tensor& k, const Tensor& v) {
  if (common_device("causal_attention_bshd", {q, k, v}) == Device::cuda)
    return cuda_backend("causal_attention_bshd").causal_attention_bshd(q, k, v);
  check_inputs(q, k, v, "causal_attention_bshd", "[B, S, H, Dh]");
  return attention_impl(q, k, v, true, "causal_attention_bshd");
}

int64_t set_attention_saved_probs_budget(int64_t bytes) { return g_saved_probs_budget.exchange(bytes); }

}  // namespace moe
