// Grouped GEMM (a BLAS call per expert segment), the fused SwiGLU expert FFN and the Experts module.
// Segments are contiguous, so every GEMM reads and writes plain row blocks without copies.
#include "layers/moe/experts.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "core/autograd.h"
#include "core/cpu/blas_threads.h"
#include "core/cpu/vec_math.h"
#include "core/device.h"
#include "core/dispatch.h"
#include "layers/init.h"
#include "layers/moe/blas.h"

namespace moe {

namespace {

// Below this many multiply-adds in all a grouped GEMM runs its segments in sequence (BLAS may
// still thread each one); above it, experts run in parallel with single-threaded BLAS, which
// saves OpenBLAS's per-call thread hand-off on every (small) per-expert GEMM.
constexpr double kParallelSegmentsWork = double(1 << 20);

// Calls fn(e, r0, n) for every expert e, rows [r0, r0 + n) of its segment (n may be 0). Each call
// writes only its own rows and weight block, so results do not depend on the schedule. Largest
// segments go first so a dynamic schedule balances skewed loads.
template <class F>
void for_each_segment(const std::vector<int64_t>& offsets, double work_per_row, F&& fn) {
  const int64_t E = int64_t(offsets.size()) - 1;
  std::vector<int64_t> order(static_cast<size_t>(E));
  int64_t nonempty = 0;
  for (int64_t e = 0; e < E; ++e) {
    order[size_t(e)] = e;
    nonempty += offsets[size_t(e) + 1] > offsets[size_t(e)];
  }
  const double work = work_per_row * double(offsets.back());
  const bool par = tasks_in_parallel(long(nonempty), work, kParallelSegmentsWork);
  if (!par) {
    for (int64_t e = 0; e < E; ++e) fn(e, offsets[size_t(e)], offsets[size_t(e) + 1] - offsets[size_t(e)]);
    return;
  }
  auto rows = [&](int64_t e) { return offsets[size_t(e) + 1] - offsets[size_t(e)]; };
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return rows(a) > rows(b); });
  SingleThreadedBlas single(true);
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t i = 0; i < E; ++i) {
    int64_t e = order[size_t(i)];
    fn(e, offsets[size_t(e)], rows(e));
  }
}

}  // namespace

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
  Tensor xc = x.detach().contiguous(), wc = w.detach().contiguous();
  Tensor y = Tensor::empty({N, M}, x.dtype());
  const double work_per_row = double(M) * double(K);
  dispatch_float(x.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    const T *px = xc.data<T>(), *pw = wc.data<T>();
    T* py = y.data<T>();
    for_each_segment(offsets, work_per_row, [&](int64_t e, int64_t r0, int64_t n) {
      if (n > 0) blas::gemm(false, true, n, M, K, T(1), px + r0 * K, K, pw + e * M * K, K, T(0), py + r0 * M, M);
    });
  });
  if (needs_grad({x, w}))
    record(op, {y}, [x, w, xc, wc, offsets, N, K, E, M, work_per_row](const std::vector<Tensor>& g) {
      Tensor gy = g[0].contiguous();
      dispatch_float(x.dtype(), "grouped_matmul backward", [&](auto tag) {
        using T = decltype(tag);
        const T *pg = gy.data<T>(), *px = xc.data<T>(), *pw = wc.data<T>();
        const bool want_x = x.requires_grad(), want_w = w.requires_grad();
        Tensor gx = want_x ? Tensor::empty({N, K}, x.dtype()) : Tensor();
        Tensor gw = want_w ? Tensor::empty({E, M, K}, x.dtype()) : Tensor();
        T* ox = want_x ? gx.data<T>() : nullptr;
        T* ow = want_w ? gw.data<T>() : nullptr;
        // Both products of an expert in one task: one parallel region for the whole backward.
        for_each_segment(offsets, work_per_row * double(want_x + want_w), [&](int64_t e, int64_t r0, int64_t n) {
          if (want_x && n > 0)
            blas::gemm(false, false, n, K, M, T(1), pg + r0 * M, M, pw + e * M * K, K, T(0), ox + r0 * K, K);
          if (want_w) {
            T* ge = ow + e * M * K;
            if (n == 0)
              std::fill(ge, ge + M * K, T(0));
            else
              blas::gemm(true, false, M, K, n, T(1), pg + r0 * M, M, px + r0 * K, K, T(0), ge, K);
          }
        });
        if (want_x) accumulate_grad(x, gx);
        if (want_w) accumulate_grad(w, gw);
      });
    });
  return y;
}

Tensor expert_swiglu_ffn(const Tensor& x, const Tensor& w1, const Tensor& w3, const Tensor& w2,
                         const std::vector<int64_t>& offsets) {
  const char* op = "expert_swiglu_ffn";
  MOE_CHECK(x.dim() == 2 && w1.dim() == 3 && w1.shape() == w3.shape() && w2.dim() == 3, op,
            "expected x [N, D], w1 and w3 [E, H, D], w2 [E, D, H], got x ", x.shape_str(), ", w1 ", w1.shape_str(),
            ", w3 ", w3.shape_str(), ", w2 ", w2.shape_str());
  const int64_t N = x.size(0), D = x.size(1), E = w1.size(0), H = w1.size(1);
  MOE_CHECK(w1.size(2) == D && w2.shape() == (Shape{E, D, H}), op, "expected w1 and w3 [E, H, D] = [", E, ", ", H,
            ", ", D, "] and w2 [", E, ", ", D, ", ", H, "], got w1 ", w1.shape_str(), " and w2 ", w2.shape_str(),
            " for x ", x.shape_str());
  MOE_CHECK(int64_t(offsets.size()) == E + 1 && offsets.front() == 0 && offsets.back() == N, op,
            "offsets must be [E + 1] = [", E + 1, "] from 0 to N = ", N, ", got ", offsets.size(),
            " entries ending at ", offsets.empty() ? -1 : offsets.back());
  for (int64_t e = 0; e < E; ++e)
    MOE_CHECK(offsets[size_t(e)] <= offsets[size_t(e) + 1], op, "offsets must be non-decreasing (expert ", e, ")");
  // On the device (shapes and offsets checked above): bf16 tensor-core products whatever x's
  // dtype, fp32 master weights converted per call (core/cuda/ops/moe_ops.cpp).
  if (common_device(op, {x, w1, w3, w2}) == Device::cuda) return cuda_backend(op).expert_swiglu_ffn(x, w1, w3, w2, offsets);
  MOE_CHECK(x.dtype() == w1.dtype() && w3.dtype() == w1.dtype() && w2.dtype() == w1.dtype(), op, "dtype mismatch: x ",
            dtype_name(x.dtype()), ", w1 ", dtype_name(w1.dtype()), ", w3 ", dtype_name(w3.dtype()), ", w2 ",
            dtype_name(w2.dtype()));
  Tensor xc = x.detach().contiguous(), c1 = w1.detach().contiguous(), c3 = w3.detach().contiguous(),
         c2 = w2.detach().contiguous();
  // a = x w1^T, u = x w3^T and s = sigmoid(a) are kept for the backward (which then needs no
  // exp; h = a s u is recomputed there).
  Tensor a = Tensor::empty({N, H}, x.dtype()), u = Tensor::empty({N, H}, x.dtype()),
         sg = Tensor::empty({N, H}, x.dtype());
  Tensor y = Tensor::empty({N, D}, x.dtype());
  const double work_per_row = 3.0 * double(H) * double(D);
  dispatch_float(x.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    const T *px = xc.data<T>(), *p1 = c1.data<T>(), *p3 = c3.data<T>(), *p2 = c2.data<T>();
    T *pa = a.data<T>(), *pu = u.data<T>(), *ps = sg.data<T>(), *py = y.data<T>();
    for_each_segment(offsets, work_per_row, [&](int64_t e, int64_t r0, int64_t n) {
      if (n == 0) return;
      const T* xe = px + r0 * D;
      T *ae = pa + r0 * H, *ue = pu + r0 * H;
      blas::gemm(false, true, n, H, D, T(1), xe, D, p1 + e * H * D, D, T(0), ae, H);
      blas::gemm(false, true, n, H, D, T(1), xe, D, p3 + e * H * D, D, T(0), ue, H);
      std::unique_ptr<T[]> h(new T[size_t(n * H)]);  // uninitialized: fully overwritten
      vec::sigmoid_swiglu(ae, ue, ps + r0 * H, h.get(), n * H);
      blas::gemm(false, true, n, D, H, T(1), h.get(), H, p2 + e * D * H, H, T(0), py + r0 * D, D);
    });
  });
  if (needs_grad({x, w1, w3, w2}))
    record(op, {y}, [x, w1, w3, w2, xc, c1, c3, c2, a, u, sg, offsets, N, D, E, H,
                     work_per_row](const std::vector<Tensor>& g) {
      Tensor gy = g[0].contiguous();
      const bool want_x = x.requires_grad(), want_w = w1.requires_grad() || w3.requires_grad() || w2.requires_grad();
      Tensor gx = want_x ? Tensor::empty({N, D}, x.dtype()) : Tensor();
      Tensor g1, g3, g2;
      if (want_w) {
        g1 = Tensor::empty({E, H, D}, x.dtype());
        g3 = Tensor::empty({E, H, D}, x.dtype());
        g2 = Tensor::empty({E, D, H}, x.dtype());
      }
      dispatch_float(x.dtype(), "expert_swiglu_ffn backward", [&](auto tag) {
        using T = decltype(tag);
        const T *pg = gy.data<T>(), *px = xc.data<T>(), *p1 = c1.data<T>(), *p3 = c3.data<T>(),
                *p2 = c2.data<T>(), *pa = a.data<T>(), *pu = u.data<T>(), *ps = sg.data<T>();
        T* ox = want_x ? gx.data<T>() : nullptr;
        T *o1 = want_w ? g1.data<T>() : nullptr, *o3 = want_w ? g3.data<T>() : nullptr,
          *o2 = want_w ? g2.data<T>() : nullptr;
        // One task per expert does its whole backward, so the [n, H] intermediates stay in cache.
        for_each_segment(offsets, 2.0 * work_per_row, [&](int64_t e, int64_t r0, int64_t n) {
          if (n == 0) {
            if (want_w) {
              std::fill(o1 + e * H * D, o1 + (e + 1) * H * D, T(0));
              std::fill(o3 + e * H * D, o3 + (e + 1) * H * D, T(0));
              std::fill(o2 + e * D * H, o2 + (e + 1) * D * H, T(0));
            }
            return;
          }
          const T *xe = px + r0 * D, *ge = pg + r0 * D, *ae = pa + r0 * H, *ue = pu + r0 * H, *se = ps + r0 * H;
          std::unique_ptr<T[]> buf(new T[size_t(2 * n * H)]);  // uninitialized: fully overwritten
          T *gh = buf.get(), *du = buf.get() + n * H;
          if (want_w) {  // dW2 = dY^T h, with h = a s u recomputed
            vec::swiglu_from_sigmoid(ae, ue, se, du, n * H);
            blas::gemm(true, false, D, H, n, T(1), ge, D, du, H, T(0), o2 + e * D * H, H);
          }
          blas::gemm(false, false, n, H, D, T(1), ge, D, p2 + e * D * H, H, T(0), gh, H);  // dh = dY W2
          vec::swiglu_backward_from_sigmoid(gh, ae, ue, se, gh, du, n * H);  // gh becomes da
          if (want_x) {  // dX = da W1 + du W3
            blas::gemm(false, false, n, D, H, T(1), gh, H, p1 + e * H * D, D, T(0), ox + r0 * D, D);
            blas::gemm(false, false, n, D, H, T(1), du, H, p3 + e * H * D, D, T(1), ox + r0 * D, D);
          }
          if (want_w) {  // dW1 = da^T X, dW3 = du^T X
            blas::gemm(true, false, H, D, n, T(1), gh, H, xe, D, T(0), o1 + e * H * D, D);
            blas::gemm(true, false, H, D, n, T(1), du, H, xe, D, T(0), o3 + e * H * D, D);
          }
        });
      });
      if (want_x) accumulate_grad(x, gx);
      if (want_w) {
        accumulate_grad(w1, g1);
        accumulate_grad(w3, g3);
        accumulate_grad(w2, g2);
      }
    });
  return y;
}

namespace {
// init_normal_ (counter-based, all threads): a serial draw here took ~50 s for the 400 M expert
// parameters of a d_model-1024 model before its first step.
Tensor init_normal(const Shape& shape, double std, Philox& rng, DType dt) {
  Tensor t = Tensor::empty(shape, dt);
  init_normal_(t, rng, std);
  return t;
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
  // On the device the activations keep their dtype (bf16 or fp32) and the fp32 masters are
  // converted where they multiply; on the host x takes the weights' dtype.
  if (xs.device() == Device::cuda) return expert_swiglu_ffn(xs, w1_, w3_, w2_, offsets);
  Tensor x = xs.dtype() == w1_.dtype() ? xs : xs.to(w1_.dtype());
  return expert_swiglu_ffn(x, w1_, w3_, w2_, offsets);
}

Tensor Experts::forward_all(const Tensor& x) {
  MOE_CHECK(num_experts() == 1, "Experts.forward_all", "expects a single expert, have ", num_experts());
  return forward(x, {0, x.size(0)});
}

}  // namespace moe
