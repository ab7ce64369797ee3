// Router: fused gate GEMM + score function with one backward, z-loss, input jitter.
// Kept as fused kernels because the router runs in fp32 whatever the model dtype.
#include "layers/moe/router.h"

#include <cmath>

#include "core/autograd.h"
#include "core/cpu/blas_threads.h"
#include "core/cpu/elementwise.h"
#include "core/device.h"
#include "core/dispatch.h"
#include "layers/moe/blas.h"

namespace moe {

ScoreFunction parse_score_function(const std::string& name) {
  if (name == "softmax") return ScoreFunction::softmax;
  if (name == "sigmoid") return ScoreFunction::sigmoid;
  MOE_FAIL("router.score", "unknown score function '", name, "' (expected softmax | sigmoid)");
}

namespace {

template <class T>
void scores_from_logits(const T* x, T* s, int64_t rows, int64_t cols, ScoreFunction fn) {
#pragma omp parallel for if (rows * cols > 65536)
  for (int64_t t = 0; t < rows; ++t) {
    const T* xr = x + t * cols;
    T* sr = s + t * cols;
    if (fn == ScoreFunction::sigmoid) {
      for (int64_t j = 0; j < cols; ++j) sr[j] = T(1) / (T(1) + std::exp(-xr[j]));
      continue;
    }
    T mx = xr[0];
    for (int64_t j = 1; j < cols; ++j) mx = std::max(mx, xr[j]);
    T z = 0;
    for (int64_t j = 0; j < cols; ++j) z += (sr[j] = std::exp(xr[j] - mx));
    T inv = T(1) / z;
    for (int64_t j = 0; j < cols; ++j) sr[j] *= inv;
  }
}

}  // namespace

std::pair<Tensor, Tensor> router_logits_scores(const Tensor& x, const Tensor& w, ScoreFunction fn,
                                               const Tensor& jitter) {
  const char* op = "router_logits_scores";
  MOE_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), op, "expected x [T, D] and w [E, D], got x ",
            x.shape_str(), " and w ", w.shape_str());
  MOE_CHECK(x.dtype() == w.dtype(), op, "dtype mismatch: x ", dtype_name(x.dtype()), " vs w ", dtype_name(w.dtype()));
  MOE_CHECK(!jitter.defined() || jitter.shape() == x.shape(), op, "jitter ", jitter.defined() ? jitter.shape_str() : "",
            " must have x's shape ", x.shape_str());
  const int64_t T_ = x.size(0), D = x.size(1), E = w.size(0);
  Tensor xj = jitter.defined() ? mul(x.detach(), jitter.to(x.dtype())) : x.contiguous().detach();
  Tensor wc = w.contiguous();
  Tensor logits = Tensor::empty({T_, E}, x.dtype()), scores = Tensor::empty({T_, E}, x.dtype());
  dispatch_float(x.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    // The router's GEMMs are small (T x E x D with E ~ 8-64): on the calling thread, without
    // waking OpenBLAS's pool, whose workers would then spin on the cores OpenMP needs next.
    SingleThreadedBlas single(true);
    if (T_ > 0) blas::gemm(false, true, T_, E, D, T(1), xj.data<T>(), D, wc.data<T>(), D, T(0), logits.data<T>(), E);
    scores_from_logits(logits.data<T>(), scores.data<T>(), T_, E, fn);
  });
  if (needs_grad({x, w})) {
    Tensor jit = jitter.defined() ? jitter.to(x.dtype()) : Tensor();
    record(op, {logits, scores}, [x, w, wc, xj, jit, scores, fn, T_, D, E](const std::vector<Tensor>& g) {
      Tensor gl = Tensor::empty({T_, E}, x.dtype());
      dispatch_float(x.dtype(), "router_logits_scores backward", [&](auto tag) {
        using T = decltype(tag);
        Tensor g0 = g[0].contiguous(), g1 = g[1].contiguous();
        const T *pg0 = g0.data<T>(), *pg1 = g1.data<T>(), *ps = scores.data<T>();
        T* pgl = gl.data<T>();
#pragma omp parallel for if (T_ * E > 65536)
        for (int64_t t = 0; t < T_; ++t) {
          const T *a = pg0 + t * E, *b = pg1 + t * E, *s = ps + t * E;
          T* o = pgl + t * E;
          if (fn == ScoreFunction::sigmoid) {
            for (int64_t j = 0; j < E; ++j) o[j] = a[j] + b[j] * s[j] * (T(1) - s[j]);
          } else {
            T dot = 0;
            for (int64_t j = 0; j < E; ++j) dot += b[j] * s[j];
            for (int64_t j = 0; j < E; ++j) o[j] = a[j] + s[j] * (b[j] - dot);
          }
        }
        SingleThreadedBlas single(true);
        if (w.requires_grad()) {
          // GEMM with beta = 0 overwrites the buffer; only an empty batch needs the zeros.
          Tensor gw = T_ > 0 ? Tensor::empty({E, D}, x.dtype()) : Tensor::zeros({E, D}, x.dtype());
          if (T_ > 0) blas::gemm(true, false, E, D, T_, T(1), pgl, E, xj.data<T>(), D, T(0), gw.data<T>(), D);
          accumulate_grad(w, gw);
        }
        if (x.requires_grad()) {
          Tensor gx = Tensor::empty({T_, D}, x.dtype());
          if (T_ > 0) blas::gemm(false, false, T_, D, E, T(1), pgl, E, wc.data<T>(), D, T(0), gx.data<T>(), D);
          if (jit.defined()) gx = mul(gx, jit);
          accumulate_grad(x, gx);
        }
      });
    });
  }
  return {logits, scores};
}

Tensor router_z_loss(const Tensor& logits) {
  const char* op = "router_z_loss";
  MOE_CHECK(logits.dim() == 2 && logits.size(0) > 0, op, "expected logits [T, E] with T > 0, got ", logits.shape_str());
  if (logits.device() == Device::cuda) return cuda_backend(op).router_z_loss(logits);
  const int64_t T_ = logits.size(0), E = logits.size(1);
  Tensor lc = logits.contiguous().detach();
  Tensor lse = Tensor::empty({T_}, logits.dtype());
  Tensor out = Tensor::empty({}, logits.dtype());
  dispatch_float(logits.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    const T* x = lc.data<T>();
    T* l = lse.data<T>();
    for (int64_t t = 0; t < T_; ++t) {
      const T* r = x + t * E;
      T mx = r[0];
      for (int64_t j = 1; j < E; ++j) mx = std::max(mx, r[j]);
      T z = 0;
      for (int64_t j = 0; j < E; ++j) z += std::exp(r[j] - mx);
      l[t] = mx + std::log(z);
    }
    double acc = 0;  // fixed-order sum in double: deterministic and accurate for large T
    for (int64_t t = 0; t < T_; ++t) acc += double(l[t]) * double(l[t]);
    *out.data<T>() = T(acc / double(T_));
  });
  if (needs_grad({logits}))
    record(op, {out}, [logits, lc, lse, T_, E](const std::vector<Tensor>& g) {
      Tensor gx = Tensor::empty({T_, E}, logits.dtype());
      dispatch_float(logits.dtype(), "router_z_loss backward", [&](auto tag) {
        using T = decltype(tag);
        const T go = g[0].contiguous().data<T>()[0];
        const T *x = lc.data<T>(), *l = lse.data<T>();
        T* o = gx.data<T>();
        // d/dx_tj of mean_t lse_t^2 = 2 lse_t softmax(x_t)_j / T
        for (int64_t t = 0; t < T_; ++t) {
          T c = go * T(2) * l[t] / T(T_);
          for (int64_t j = 0; j < E; ++j) o[t * E + j] = c * std::exp(x[t * E + j] - l[t]);
        }
      });
      accumulate_grad(logits, gx);
    });
  return out;
}

Router::Router(int64_t d_model, int64_t outputs, ScoreFunction fn, double jitter, double init_std, Philox& init_rng,
               DType dtype)
    : fn_(fn), jitter_(jitter) {
  MOE_CHECK(d_model > 0 && outputs > 0, "Router", "d_model and outputs must be positive, got ", d_model, " and ",
            outputs);
  DType dt = dtype == DType::f64 ? DType::f64 : DType::f32;
  Tensor w = Tensor::empty({outputs, d_model}, DType::f64);
  double* p = w.data<double>();
  for (int64_t i = 0; i < w.numel(); ++i) p[i] = init_rng.normal() * init_std;
  weight_ = register_parameter("weight", w.to(dt));
}

RouterOutput Router::forward(const Tensor& x, int64_t num_experts, int64_t top_k, int64_t seq_len, Philox& jitter_rng) {
  MOE_CHECK(x.dim() == 2 && x.size(1) == weight_.size(1), "Router.forward", "expected x [T, ", weight_.size(1),
            "], got ", x.shape_str());
  // On the host in fp32 (DESIGN.md rule 3) also for a layer on the device where the router cannot
  // run there (jitter, whose RNG is the host's; set_device_routing(false)): input and weight come
  // to the host differentiably, so their grads return to the device.
  Tensor xh = x.device() == Device::cpu ? x : x.to(Device::cpu);
  Tensor wh = weight_.device() == Device::cpu ? weight_ : weight_.to(Device::cpu);
  Tensor xr = xh.dtype() == dtype() ? xh : xh.to(dtype());
  Tensor jit;
  if (training() && jitter_ > 0) {
    jit = Tensor::empty(x.shape(), DType::f64);
    double* p = jit.data<double>();
    for (int64_t i = 0; i < jit.numel(); ++i) p[i] = 1.0 - jitter_ + 2.0 * jitter_ * jitter_rng.uniform();
  }
  auto [logits, scores] = router_logits_scores(xr, wh, fn_, jit);
  return RouterOutput{logits, scores, num_experts, top_k, seq_len, training()};
}

RouterOutput Router::forward_on_device(const Tensor& x, int64_t num_experts, int64_t top_k, int64_t seq_len) {
  const char* op = "Router.forward_on_device";
  MOE_CHECK(x.dim() == 2 && x.size(1) == weight_.size(1) && x.device() == Device::cuda &&
                weight_.device() == Device::cuda && weight_.dtype() == DType::f32,
            op, "expected x [T, ", weight_.size(1), "] and an fp32 weight on the cuda device, got x ", x.shape_str(),
            " on ", device_name(x.device()), " and a ", dtype_name(weight_.dtype()), " weight on ",
            device_name(weight_.device()));
  MOE_CHECK(x.size(0) >= 1, op, "no tokens to route");
  CudaBackend& be = cuda_backend(op);
  Tensor xf = x.dtype() == DType::f32 ? x : x.to(DType::f32);
  Tensor logits = be.linear(xf, weight_, Tensor());
  Tensor scores = be.router_scores(logits, fn_ == ScoreFunction::sigmoid);
  return RouterOutput{logits, scores, num_experts, top_k, seq_len, training()};
}

}  // namespace moe
