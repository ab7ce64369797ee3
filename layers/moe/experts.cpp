// Grouped GEMM (a BLAS call per expert segment) and the Experts module (SwiGLU from core/cpu).
// Segments are contiguous, so every GEMM reads and writes plain row blocks without copies.
#include "layers/moe/experts.h"

#include <cmath>

#include "core/autograd.h"
#include "core/cpu/activation.h"
#include "core/dispatch.h"
#include "layers/moe/blas.h"

namespace moe {

Tensor grouped_matmul(const Tensor& x, const Tensor& w, const std::vector<int64_t>& offsets) {
  const char* op = "grouped_matmul";
  MOE_CHECK(x.dim() == 2 && w.dim() == 3 && x.size(1) == w.size(2), op, "expected x [N, K] and w [E, M, K], got x ",
            x.shape_str(), " and w ", w.shape_str());
  MOE_CHECK(x.dtype() == w.dtype(), op, "dtype mismatch: x ", dtype_name(x.dtype()), " vs w ", dtype_name(w.dtype()));
  const int64_t N = x.size(0), K = x.size(1), E = w.size(0), M = w.size(1);
  MOE_CHECK(int64_t(offsets.size()) == E + 1 && offsets.front() == 0 && offsets.back() == N, op,
            "offsets must be [E + 1] = [", E + 1, "] from 0 to N = ", N, ", got ", offsets.size(),
            " entries ending at ", offsets.empty() ? -1 : offsets.back());
  for (int64_t e = 0; e < E; ++e)
    MOE_CHECK(offsets[size_t(e)] <= offsets[size_t(e) + 1], op, "offsets must be non-decreasing (expert ", e, ")");
  Tensor xc = x.contiguous(), wc = w.contiguous();
  Tensor y = Tensor::empty({N, M}, x.dtype());
  dispatch_float(x.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    const T *px = xc.data<T>(), *pw = wc.data<T>();
    T* py = y.data<T>();
    for (int64_t e = 0; e < E; ++e) {
      int64_t r0 = offsets[size_t(e)], n = offsets[size_t(e) + 1] - r0;
      if (n == 0) continue;
      blas::gemm(false, true, n, M, K, T(1), px + r0 * K, K, pw + e * M * K, K, T(0), py + r0 * M, M);
    }
  });
  if (needs_grad({x, w}))
    record(op, {y}, [x, w, xc, wc, offsets, N, K, E, M](const std::vector<Tensor>& g) {
      Tensor gy = g[0].contiguous();
      dispatch_float(x.dtype(), "grouped_matmul backward", [&](auto tag) {
        using T = decltype(tag);
        const T *pg = gy.data<T>(), *px = xc.data<T>(), *pw = wc.data<T>();
        if (x.requires_grad()) {
          Tensor gx = Tensor::empty({N, K}, x.dtype());
          T* o = gx.data<T>();
          for (int64_t e = 0; e < E; ++e) {
            int64_t r0 = offsets[size_t(e)], n = offsets[size_t(e) + 1] - r0;
            if (n == 0) continue;
            blas::gemm(false, false, n, K, M, T(1), pg + r0 * M, M, pw + e * M * K, K, T(0), o + r0 * K, K);
          }
          accumulate_grad(x, gx);
        }
        if (w.requires_grad()) {
          Tensor gw = Tensor::empty({E, M, K}, x.dtype());
          T* o = gw.data<T>();
          for (int64_t e = 0; e < E; ++e) {
            int64_t r0 = offsets[size_t(e)], n = offsets[size_t(e) + 1] - r0;
            T* ge = o + e * M * K;
            if (n == 0) {
              for (int64_t i = 0; i < M * K; ++i) ge[i] = 0;
              continue;
            }
            blas::gemm(true, false, M, K, n, T(1), pg + r0 * M, M, px + r0 * K, K, T(0), ge, K);
          }
          accumulate_grad(w, gw);
        }
      });
    });
  return y;
}

namespace {
Tensor init_normal(const Shape& shape, double std, Philox& rng, DType dt) {
  Tensor t = Tensor::empty(shape, DType::f64);
  double* p = t.data<double>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = rng.normal() * std;
  return t.to(dt);
}
}  // namespace

Experts::Experts(int64_t num_experts, int64_t d_model, int64_t hidden, double init_std, double out_std,
                 Philox& init_rng, DType dtype) {
  MOE_CHECK(num_experts > 0 && d_model > 0 && hidden > 0, "Experts",
            "num_experts, d_model and hidden must be > 0, got ", num_experts, ", ", d_model, ", ", hidden);
  w1_ = register_parameter("w1", init_normal({num_experts, hidden, d_model}, init_std, init_rng, dtype));
  w3_ = register_parameter("w3", init_normal({num_experts, hidden, d_model}, init_std, init_rng, dtype));
  w2_ = register_parameter("w2", init_normal({num_experts, d_model, hidden}, out_std, init_rng, dtype));
}

Tensor Experts::forward(const Tensor& xs, const std::vector<int64_t>& offsets) {
  Tensor x = xs.dtype() == w1_.dtype() ? xs : xs.to(w1_.dtype());
  Tensor h = swiglu(grouped_matmul(x, w1_, offsets), grouped_matmul(x, w3_, offsets));
  return grouped_matmul(h, w2_, offsets);
}

Tensor Experts::forward_all(const Tensor& x) {
  MOE_CHECK(num_experts() == 1, "Experts.forward_all", "expects a single expert, have ", num_experts());
  return forward(x, {0, x.size(0)});
}

}  // namespace moe
