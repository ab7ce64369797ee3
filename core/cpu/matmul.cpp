// matmul (shared-B and batched) and linear through OpenBLAS GEMM, forward and backward.
// Strided views reach BLAS as leading dimensions and transpose flags; only other layouts copy.
#include "core/cpu/matmul.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <climits>
#include <cstring>

#include "core/autograd.h"
#include "core/device.h"
#include "core/cpu/blas_threads.h"
#include "core/dispatch.h"

namespace moe {
namespace {

// Below this many multiply-adds OpenBLAS runs a GEMM on the calling thread (its
// GEMM_MULTITHREAD_THRESHOLD of 4 x 65536), so batches of such GEMMs can be spread over OpenMP
// threads without two thread pools fighting over the cores; larger ones use OpenBLAS's threads.
constexpr int64_t kBlasSingleThreadWork = 4 * 65536;
// Below this much total work a parallel region costs more than it saves.
constexpr int64_t kParallelBatchWork = 32768;

void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
          const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, blasint(m),
              blasint(n), blasint(k), alpha, a, blasint(lda), b, blasint(ldb), beta, c, blasint(ldc));
}
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha, const double* a, int64_t lda,
          const double* b, int64_t ldb, double beta, double* c, int64_t ldc) {
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, blasint(m),
              blasint(n), blasint(k), alpha, a, blasint(lda), b, blasint(ldb), beta, c, blasint(ldc));
}

// Above this many multiply-adds one GEMM is split over the OpenMP threads by rows of C (each
// piece a single-threaded BLAS call) instead of being handed to OpenBLAS's own thread pool: the
// OpenMP team is already awake for the other ops, while OpenBLAS's workers would spin
// (sched_yield) between calls on the cores the OpenMP threads need.
constexpr double kSplitGemmWork = double(1 << 21);
constexpr int64_t kSplitRowAlign = 16;  // row pieces in multiples of OpenBLAS's micro-tile height

// C = alpha op(A) op(B) + beta C with C's rows split evenly over the OpenMP threads (a fixed
// partition: every element is computed by one single-threaded GEMM over the full K, so results
// do not depend on scheduling). Small or short GEMMs run as one call.
template <class T>
void gemm_split_rows(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda, const T* b,
                     int64_t ldb, T beta, T* c, int64_t ldc) {
  const int threads = omp_get_max_threads();
  const bool split = threads > 1 && !omp_in_parallel() && m >= 2 * kSplitRowAlign &&
                     double(m) * double(n) * double(k) >= kSplitGemmWork;
  if (!split) {
    gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  const int64_t pieces = std::min<int64_t>(threads, m / kSplitRowAlign);
  const int64_t step = (m / pieces + kSplitRowAlign - 1) / kSplitRowAlign * kSplitRowAlign;
  SingleThreadedBlas single(true);
#pragma omp parallel for schedule(static) num_threads(int(pieces))
  for (int64_t p = 0; p < pieces; ++p) {
    int64_t r0 = p * step, r1 = std::min(m, r0 + step);
    if (r0 >= r1) continue;
    // Row r of op(A) is row r of A, or column r when A is transposed.
    const T* ap = ta ? a + r0 : a + r0 * lda;
    gemm(ta, tb, r1 - r0, n, k, alpha, ap, lda, b, ldb, beta, c + r0 * ldc, ldc);
  }
}

// A tensor [batch..., rows, cols] as BLAS sees it: `batch` matrices `bstride` elements apart,
// each row-major with leading dimension `ld`, or (trans) the transpose of a row-major
// [cols, rows] matrix. `keep` owns the memory (a contiguous copy when the view had no such form).
struct BlasMat {
  Tensor keep;
  int64_t batch = 1, bstride = 0, rows = 0, cols = 0, ld = 1;
  bool trans = false;
};

// Leading dims collapse to one batch stride when each non-unit dim steps over the next ones.
bool collapse_batch(const Tensor& x, int64_t& batch, int64_t& bstride) {
  batch = 1;
  bstride = 0;
  int64_t expect = -1;
  for (int64_t d = x.dim() - 3; d >= 0; --d) {
    int64_t size = x.shape()[d], stride = x.strides()[d];
    if (size == 1) continue;
    if (expect < 0) {
      bstride = stride;
    } else if (stride != expect) {
      return false;
    }
    expect = stride * size;
    batch *= size;
  }
  return true;
}

bool matrix_layout(int64_t rows, int64_t cols, int64_t sr, int64_t sc, bool& trans, int64_t& ld) {
  if ((cols == 1 || sc == 1) && (rows == 1 || sr >= std::max<int64_t>(cols, 1))) {
    trans = false;
    ld = sr >= std::max<int64_t>(cols, 1) ? sr : std::max<int64_t>(cols, 1);
    return true;
  }
  if ((rows == 1 || sr == 1) && (cols == 1 || sc >= std::max<int64_t>(rows, 1))) {
    trans = true;
    ld = sc >= std::max<int64_t>(rows, 1) ? sc : std::max<int64_t>(rows, 1);
    return true;
  }
  return false;
}

BlasMat blas_mat(const Tensor& x) {
  BlasMat m;
  int64_t nd = x.dim();
  m.rows = x.shape()[nd - 2];
  m.cols = x.shape()[nd - 1];
  m.keep = x.detach();
  if (!collapse_batch(x, m.batch, m.bstride) ||
      !matrix_layout(m.rows, m.cols, x.strides()[nd - 2], x.strides()[nd - 1], m.trans, m.ld)) {
    m.keep = x.detach().contiguous();
    collapse_batch(m.keep, m.batch, m.bstride);
    m.trans = false;
    m.ld = std::max<int64_t>(m.cols, 1);
  }
  if (m.batch == 1) m.bstride = 0;
  return m;
}

// out[i] (+)= a[i] b[i] for each batch index i; b has batch 1 when it is shared. out is a
// contiguous [batch, M, N] block; beta = 1 accumulates into it (linear's bias).
template <class T>
void gemm_batched(const BlasMat& a, const BlasMat& b, T* out, T beta) {
  int64_t m = a.rows, k = a.cols, n = b.cols;
  const T* pa = a.keep.data<T>();
  const T* pb = b.keep.data<T>();
  int64_t lda = a.ld, ldb = b.ld;
  // A shared B and row-major A whose batches sit back to back: one GEMM over all rows.
  if (b.batch == 1 && (a.batch == 1 || (!a.trans && a.bstride == m * a.ld && a.batch * m < INT_MAX))) {
    gemm_split_rows(a.trans, b.trans, a.batch * m, n, k, T(1), pa, lda, pb, ldb, beta, out, n);
    return;
  }
  int64_t batch = a.batch, sb = b.batch == 1 ? 0 : b.bstride;
  auto one = [&](int64_t i) {
    gemm(a.trans, b.trans, m, n, k, T(1), pa + i * a.bstride, lda, pb + i * sb, ldb, beta, out + i * m * n, n);
  };
  if (m * n * k <= kBlasSingleThreadWork) {
#pragma omp parallel for schedule(static) if (batch > 1 && batch * m * n * k > kParallelBatchWork)
    for (int64_t i = 0; i < batch; ++i) one(i);
  } else {
    for (int64_t i = 0; i < batch; ++i) one(i);
  }
}

void check_blas_size(const char* op, const Tensor& a, const Tensor& b) {
  for (const Tensor* t : {&a, &b})
    for (int64_t s : t->shape())
      MOE_CHECK(s < INT_MAX / 2, op, "dimension too large for BLAS in ", a.shape_str(), " and ", b.shape_str());
}

// The product without recording: a [..., M, K] with b [K, N] or b [..., K, N] (same leading dims).
Tensor matmul_nograd(const Tensor& a, const Tensor& b) {
  Shape out_shape = a.shape();
  out_shape.back() = b.shape().back();
  // K == 0 is an empty sum; otherwise GEMM with beta = 0 overwrites every element.
  if (a.shape().back() == 0) return Tensor::zeros(out_shape, a.dtype());
  Tensor out = Tensor::empty(out_shape, a.dtype());
  if (out.numel() == 0) return out;
  BlasMat ma = blas_mat(a), mb = blas_mat(b);
  dispatch_float(a.dtype(), "matmul", [&](auto tag) {
    using T = decltype(tag);
    gemm_batched<T>(ma, mb, out.data<T>(), T(0));
  });
  return out;
}

// Sum over rows of a contiguous [R, N] block, in row order (deterministic).
Tensor column_sums(const Tensor& g2) {
  int64_t r = g2.shape()[0], n = g2.shape()[1];
  Tensor out = Tensor::zeros({n}, g2.dtype());
  dispatch_float(g2.dtype(), "linear", [&](auto tag) {
    using T = decltype(tag);
    const T* g = g2.data<T>();
    T* o = out.data<T>();
    for (int64_t i = 0; i < r; ++i) {
      const T* row = g + i * n;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) o[j] += row[j];
    }
  });
  return out;
}

}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b) {
  MOE_CHECK(a.defined() && b.defined(), "matmul", "undefined input");
  MOE_CHECK(common_device("matmul", {a, b}) == Device::cpu, "matmul", "not available on the cuda device (a ",
            a.shape_str(), ", b ", b.shape_str(), "); use linear");
  MOE_CHECK(a.dim() >= 2 && b.dim() >= 2, "matmul", "expected matrices (2+ dims), got ", a.shape_str(), " and ",
            b.shape_str());
  MOE_CHECK(a.dtype() == b.dtype(), "matmul", "dtype mismatch: ", dtype_name(a.dtype()), " ", a.shape_str(),
            " vs ", dtype_name(b.dtype()), " ", b.shape_str());
  MOE_CHECK(a.shape().back() == b.shape()[b.dim() - 2], "matmul", "cannot multiply ", a.shape_str(), " and ",
            b.shape_str(), ": inner dims ", a.shape().back(), " and ", b.shape()[b.dim() - 2], " differ");
  bool batched = b.dim() > 2;
  if (batched) {
    bool same = a.dim() == b.dim();
    for (int64_t d = 0; same && d < a.dim() - 2; ++d) same = a.shape()[d] == b.shape()[d];
    MOE_CHECK(same, "matmul", "cannot multiply ", a.shape_str(), " and ", b.shape_str(),
              ": batched operands need the same leading dims (or b 2-D, shared)");
  }
  check_blas_size("matmul", a, b);
  Tensor out = matmul_nograd(a, b);
  if (needs_grad({a, b}))
    record("matmul", {out}, [a, b, batched](const std::vector<Tensor>& g) {
      Tensor gy = g[0];
      Tensor ad = a.detach(), bd = b.detach();
      if (a.requires_grad()) accumulate_grad(a, matmul_nograd(gy, bd.transpose(-1, -2)));
      if (b.requires_grad()) {
        if (batched) {
          accumulate_grad(b, matmul_nograd(ad.transpose(-1, -2), gy));
        } else {
          // b is shared by every leading index: one GEMM over all rows, K x (rows) x N.
          int64_t k = a.shape().back(), n = b.shape().back();
          Tensor a2 = a.dim() == 2 ? ad : ad.reshape({-1, k});
          Tensor g2 = gy.dim() == 2 ? gy : gy.reshape({-1, n});
          accumulate_grad(b, matmul_nograd(a2.transpose(0, 1), g2));
        }
      }
    });
  return out;
}

Tensor linear(const Tensor& x, const Tensor& w, const Tensor& bias) {
  MOE_CHECK(x.defined() && w.defined(), "linear", "undefined input");
  if (common_device("linear", {x, w, bias}) == Device::cuda) return cuda_backend("linear").linear(x, w, bias);
  MOE_CHECK(w.dim() == 2 && x.dim() >= 1 && x.shape().back() == w.shape()[1], "linear", "cannot apply weight ",
            w.shape_str(), " (expected [out, in]) to input ", x.shape_str(), " (expected [..., in])");
  MOE_CHECK(x.dtype() == w.dtype(), "linear", "dtype mismatch: input ", dtype_name(x.dtype()), " ", x.shape_str(),
            " vs weight ", dtype_name(w.dtype()), " ", w.shape_str());
  int64_t in = w.shape()[1], out_f = w.shape()[0];
  if (bias.defined()) {
    MOE_CHECK(bias.dim() == 1 && bias.shape()[0] == out_f, "linear", "bias ", bias.shape_str(),
              " does not match weight ", w.shape_str(), " (expected [", out_f, "])");
    MOE_CHECK(bias.dtype() == x.dtype(), "linear", "bias dtype ", dtype_name(bias.dtype()), " vs input ",
              dtype_name(x.dtype()));
  }
  check_blas_size("linear", x, w);
  Shape out_shape = x.shape();
  out_shape.back() = out_f;
  int64_t rows = shape_numel(Shape(x.shape().begin(), x.shape().end() - 1));
  Tensor xd = x.detach();
  Tensor x2 = x.dim() == 2 ? xd : xd.reshape({rows, in});
  Tensor out = Tensor::empty({rows, out_f}, x.dtype());
  dispatch_float(x.dtype(), "linear", [&](auto tag) {
    using T = decltype(tag);
    T* o = out.data<T>();
    T beta = T(0);
    if (bias.defined()) {
      Tensor bc = bias.detach().contiguous();
      const T* pb = bc.data<T>();
      for (int64_t i = 0; i < rows; ++i) std::memcpy(o + i * out_f, pb, size_t(out_f) * sizeof(T));
      beta = T(1);
    } else if (in == 0) {
      std::fill(o, o + rows * out_f, T(0));
    }
    if (rows == 0 || out_f == 0 || in == 0) return;
    BlasMat mx = blas_mat(x2), mw = blas_mat(w.detach().transpose(0, 1));
    gemm_batched<T>(mx, mw, o, beta);
  });
  out = out.reshape(out_shape);
  if (needs_grad({x, w, bias}))
    record("linear", {out}, [x, w, bias, x2, rows, in, out_f](const std::vector<Tensor>& g) {
      Tensor g2 = g[0].reshape({rows, out_f});
      const bool want_x = x.requires_grad(), want_w = w.requires_grad();
      if (want_x && want_w && omp_get_max_threads() > 1 && !omp_in_parallel() && rows > 0 && in > 0 && out_f > 0 &&
          double(rows) * double(in) * double(out_f) >= kSplitGemmWork) {
        // dx = g W and dW = g^T x cost the same: one thread each, single-threaded BLAS, so
        // neither product is split (splitting dW would pack x once per piece).
        Tensor dx = Tensor::empty({rows, in}, x.dtype()), dw = Tensor::empty({out_f, in}, x.dtype());
        BlasMat mg = blas_mat(g2), mgt = blas_mat(g2.transpose(0, 1)), mw = blas_mat(w.detach()),
                mx = blas_mat(x2);
        dispatch_float(x.dtype(), "linear backward", [&](auto tag) {
          using T = decltype(tag);
          SingleThreadedBlas single(true);
#pragma omp parallel for schedule(static) num_threads(2)
          for (int i = 0; i < 2; ++i) {
            if (i == 0)
              gemm_batched<T>(mg, mw, dx.data<T>(), T(0));
            else
              gemm_batched<T>(mgt, mx, dw.data<T>(), T(0));
          }
        });
        accumulate_grad(x, dx.reshape(x.shape()));
        accumulate_grad(w, dw);
      } else {
        if (want_x) accumulate_grad(x, matmul_nograd(g2, w.detach()).reshape(x.shape()));
        if (want_w) accumulate_grad(w, matmul_nograd(g2.transpose(0, 1), x2));
      }
      if (bias.defined() && bias.requires_grad()) accumulate_grad(bias, column_sums(g2.contiguous()));
    });
  return out;
}

std::vector<Tensor> linear_shared_input(const Tensor& x, const std::vector<Tensor>& weights) {
  const char* op = "linear_shared_input";
  MOE_CHECK(x.defined() && x.dim() >= 1 && !weights.empty(), op, "expected x [..., in] and at least one weight");
  if (x.device() == Device::cuda) return cuda_backend(op).linear_shared_input(x, weights);
  const int64_t in = x.shape().back();
  for (const Tensor& w : weights) {
    MOE_CHECK(w.defined() && w.dim() == 2 && w.shape()[1] == in, op, "cannot apply weight ",
              w.defined() ? w.shape_str() : "undefined", " (expected [out, ", in, "]) to input ", x.shape_str());
    MOE_CHECK(w.dtype() == x.dtype(), op, "dtype mismatch: input ", dtype_name(x.dtype()), " vs weight ",
              dtype_name(w.dtype()), " ", w.shape_str());
    check_blas_size(op, x, w);
  }
  const int64_t rows = shape_numel(Shape(x.shape().begin(), x.shape().end() - 1));
  Tensor xd = x.detach();
  Tensor x2 = x.dim() == 2 ? xd : xd.reshape({rows, in});
  std::vector<Tensor> outs;
  for (const Tensor& w : weights) {
    Tensor y = Tensor::empty({rows, w.shape()[0]}, x.dtype());
    const int64_t out_f = w.shape()[0];
    dispatch_float(x.dtype(), op, [&](auto tag) {
      using T = decltype(tag);
      if (in == 0) std::fill(y.data<T>(), y.data<T>() + rows * out_f, T(0));
      if (rows == 0 || out_f == 0 || in == 0) return;
      gemm_batched<T>(blas_mat(x2), blas_mat(w.detach().transpose(0, 1)), y.data<T>(), T(0));
    });
    Shape shape = x.shape();
    shape.back() = out_f;
    outs.push_back(y.reshape(shape));
  }
  std::vector<Tensor> inputs = weights;
  inputs.push_back(x);
  if (needs_grad(inputs))
    record(op, outs, [x, weights, x2, rows, in](const std::vector<Tensor>& g) {
      const size_t n = weights.size();
      std::vector<Tensor> g2(n), dw(n);
      bool want_w = false;
      for (size_t i = 0; i < n; ++i) {
        g2[i] = g[i].reshape({rows, weights[i].shape()[0]}).contiguous();
        want_w = want_w || weights[i].requires_grad();
      }
      const bool want_x = x.requires_grad();
      Tensor dx = want_x ? Tensor::empty({rows, in}, x.dtype()) : Tensor();
      for (size_t i = 0; i < n; ++i)
        if (weights[i].requires_grad()) dw[i] = Tensor::empty(weights[i].shape(), x.dtype());
      dispatch_float(x.dtype(), "linear_shared_input backward", [&](auto tag) {
        using T = decltype(tag);
        // Task 0: dx = sum_i g_i w_i in weight order; task 1: every dW_i = g_i^T x.
        auto input_grad = [&] {
          if (in == 0 || rows == 0) return;
          for (size_t i = 0; i < n; ++i) {
            if (weights[i].shape()[0] == 0) {
              if (i == 0) std::fill(dx.data<T>(), dx.data<T>() + rows * in, T(0));
              continue;
            }
            gemm_batched<T>(blas_mat(g2[i]), blas_mat(weights[i].detach()), dx.data<T>(), T(i == 0 ? 0 : 1));
          }
        };
        auto weight_grads = [&] {
          for (size_t i = 0; i < n; ++i) {
            if (!dw[i].defined() || dw[i].numel() == 0) continue;
            if (rows == 0) {
              dw[i].zero_();
              continue;
            }
            gemm_batched<T>(blas_mat(g2[i].transpose(0, 1)), blas_mat(x2), dw[i].data<T>(), T(0));
          }
        };
        double work = 0;
        for (const Tensor& w : weights) work += double(rows) * double(in) * double(w.shape()[0]);
        if (want_x && want_w && omp_get_max_threads() > 1 && !omp_in_parallel() && work >= kSplitGemmWork) {
          SingleThreadedBlas single(true);
#pragma omp parallel for schedule(static) num_threads(2)
          for (int task = 0; task < 2; ++task) {
            if (task == 0)
              input_grad();
            else
              weight_grads();
          }
        } else {
          if (want_x) input_grad();
          weight_grads();
        }
      });
      if (want_x) {
        if (in == 0 || rows == 0) dx.zero_();
        accumulate_grad(x, dx.reshape(x.shape()));
      }
      for (size_t i = 0; i < n; ++i)
        if (dw[i].defined()) accumulate_grad(weights[i], dw[i]);
    });
  return outs;
}

}  // namespace moe
