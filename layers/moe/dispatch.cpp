// Counting-sort dispatch plan and the permute / combine kernels with their backward.
// Parallel loops write disjoint rows; every sum runs in the plan's fixed order (deterministic).
#include "layers/moe/dispatch.h"

#include "core/autograd.h"
#include "core/device.h"
#include "core/dispatch.h"

namespace moe {

DispatchPlanPtr make_dispatch_plan(const Tensor& token, const Tensor& expert, const std::vector<int64_t>& kept,
                                   int64_t num_tokens, int64_t num_experts) {
  const char* op = "make_dispatch_plan";
  MOE_CHECK(token.dim() == 1 && expert.dim() == 1 && token.numel() == expert.numel(), op,
            "expected token [A] and expert [A], got ", token.shape_str(), " and ", expert.shape_str());
  auto plan = std::make_shared<DispatchPlan>();
  const int64_t A = token.numel(), K = int64_t(kept.size());
  plan->num_tokens = num_tokens;
  plan->num_experts = num_experts;
  plan->num_assignments = A;
  std::vector<int64_t> tok = token.to(DType::i64).to_vector<int64_t>();
  std::vector<int64_t> ex = expert.to(DType::i64).to_vector<int64_t>();

  auto& off = plan->offsets;
  off.assign(size_t(num_experts) + 1, 0);
  for (int64_t i = 0; i < K; ++i) {
    int64_t a = kept[size_t(i)];
    MOE_CHECK(a >= 0 && a < A && (i == 0 || a > kept[size_t(i) - 1]), op, "kept indices must be ascending in [0, ", A,
              "), got ", a, " at ", i);
    MOE_CHECK(ex[size_t(a)] >= 0 && ex[size_t(a)] < num_experts, op, "expert id ", ex[size_t(a)], " out of range [0, ",
              num_experts, ")");
    MOE_CHECK(tok[size_t(a)] >= 0 && tok[size_t(a)] < num_tokens, op, "token id ", tok[size_t(a)], " out of range [0, ",
              num_tokens, ")");
    ++off[size_t(ex[size_t(a)]) + 1];
  }
  for (int64_t e = 0; e < num_experts; ++e) off[size_t(e) + 1] += off[size_t(e)];
  // Stable scatter: assignments visited in list order land in list order within their expert.
  plan->order.resize(size_t(K));
  plan->token.resize(size_t(K));
  std::vector<int64_t> fill(off.begin(), off.end() - 1);
  std::vector<int64_t> pos_of(static_cast<size_t>(K));
  for (int64_t i = 0; i < K; ++i) {
    int64_t a = kept[size_t(i)], p = fill[size_t(ex[size_t(a)])]++;
    plan->order[size_t(p)] = a;
    plan->token[size_t(p)] = tok[size_t(a)];
    pos_of[size_t(i)] = p;
  }
  // Token-major CSR of sorted positions, again by counting in list order.
  auto& toff = plan->token_offsets;
  toff.assign(size_t(num_tokens) + 1, 0);
  for (int64_t i = 0; i < K; ++i) ++toff[size_t(tok[size_t(kept[size_t(i)])]) + 1];
  for (int64_t t = 0; t < num_tokens; ++t) toff[size_t(t) + 1] += toff[size_t(t)];
  plan->token_slots.resize(size_t(K));
  std::vector<int64_t> tfill(toff.begin(), toff.end() - 1);
  for (int64_t i = 0; i < K; ++i)
    plan->token_slots[size_t(tfill[size_t(tok[size_t(kept[size_t(i)])])]++)] = pos_of[size_t(i)];
  return plan;
}

namespace {

// dst[t] = sum over t's sorted positions p of src[p] (rows of width D), fixed order.
template <class T>
void sum_rows_per_token(const DispatchPlan& pl, const T* src, T* dst, int64_t D) {
#pragma omp parallel for if (pl.num_tokens * D > 32768)
  for (int64_t t = 0; t < pl.num_tokens; ++t) {
    T* o = dst + t * D;
    for (int64_t j = 0; j < D; ++j) o[j] = 0;
    for (int64_t s = pl.token_offsets[size_t(t)]; s < pl.token_offsets[size_t(t) + 1]; ++s) {
      const T* r = src + pl.token_slots[size_t(s)] * D;
      for (int64_t j = 0; j < D; ++j) o[j] += r[j];
    }
  }
}

}  // namespace

Tensor permute_tokens(const Tensor& x, const DispatchPlanPtr& plan) {
  const char* op = "permute_tokens";
  if (x.device() == Device::cuda) return cuda_backend(op).permute_tokens(x, plan);
  MOE_CHECK(x.dim() == 2 && x.size(0) == plan->num_tokens, op, "expected x [", plan->num_tokens, ", D], got ",
            x.shape_str());
  const int64_t D = x.size(1), K = plan->kept();
  Tensor xc = x.contiguous();
  Tensor out = Tensor::empty({K, D}, x.dtype());
  dispatch_float(x.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    const T* src = xc.data<T>();
    T* dst = out.data<T>();
    const int64_t* tok = plan->token.data();
#pragma omp parallel for if (K * D > 32768)
    for (int64_t p = 0; p < K; ++p) {
      const T* r = src + tok[p] * D;
      T* o = dst + p * D;
      for (int64_t j = 0; j < D; ++j) o[j] = r[j];
    }
  });
  if (needs_grad({x}))
    record(op, {out}, [x, plan, D](const std::vector<Tensor>& g) {
      Tensor gx = Tensor::empty({plan->num_tokens, D}, x.dtype());
      Tensor gc = g[0].contiguous();
      dispatch_float(x.dtype(), "permute_tokens backward", [&](auto tag) {
        using T = decltype(tag);
        sum_rows_per_token<T>(*plan, gc.data<T>(), gx.data<T>(), D);
      });
      accumulate_grad(x, gx);
    });
  return out;
}

Tensor unpermute_combine(const Tensor& y, const Tensor& gate, const DispatchPlanPtr& plan) {
  const char* op = "unpermute_combine";
  // On the device the gate stays fp32 whatever y's dtype (the backend converts other dtypes).
  if (common_device(op, {y, gate}) == Device::cuda) return cuda_backend(op).unpermute_combine(y, gate, plan);
  const int64_t K = plan->kept();
  MOE_CHECK(y.dim() == 2 && y.size(0) == K, op, "expected y [", K, ", D] (kept assignments), got ", y.shape_str());
  MOE_CHECK(gate.dim() == 1 && gate.numel() == plan->num_assignments, op, "expected gate [", plan->num_assignments,
            "], got ", gate.shape_str());
  MOE_CHECK(gate.dtype() == y.dtype(), op, "dtype mismatch: y ", dtype_name(y.dtype()), " vs gate ",
            dtype_name(gate.dtype()));
  const int64_t D = y.size(1), T_ = plan->num_tokens;
  Tensor yc = y.contiguous(), gc = gate.contiguous();
  Tensor out = Tensor::empty({T_, D}, y.dtype());
  dispatch_float(y.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    const T *py = yc.data<T>(), *pg = gc.data<T>();
    T* po = out.data<T>();
    const auto& pl = *plan;
#pragma omp parallel for if (T_ * D > 32768)
    for (int64_t t = 0; t < T_; ++t) {
      T* o = po + t * D;
      for (int64_t j = 0; j < D; ++j) o[j] = 0;
      for (int64_t s = pl.token_offsets[size_t(t)]; s < pl.token_offsets[size_t(t) + 1]; ++s) {
        int64_t p = pl.token_slots[size_t(s)];
        T w = pg[pl.order[size_t(p)]];
        const T* r = py + p * D;
        for (int64_t j = 0; j < D; ++j) o[j] += w * r[j];
      }
    }
  });
  if (needs_grad({y, gate}))
    record(op, {out}, [y, gate, yc, gc, plan, D](const std::vector<Tensor>& g) {
      const int64_t K = plan->kept();
      Tensor go = g[0].contiguous();
      dispatch_float(y.dtype(), "unpermute_combine backward", [&](auto tag) {
        using T = decltype(tag);
        const T *pgo = go.data<T>(), *py = yc.data<T>(), *pg = gc.data<T>();
        const int64_t* order = plan->order.data();
        const int64_t* tok = plan->token.data();
        if (y.requires_grad()) {
          Tensor gy = Tensor::empty({K, D}, y.dtype());
          T* o = gy.data<T>();
#pragma omp parallel for if (K * D > 32768)
          for (int64_t p = 0; p < K; ++p) {
            T w = pg[order[p]];
            const T* r = pgo + tok[p] * D;
            for (int64_t j = 0; j < D; ++j) o[p * D + j] = w * r[j];
          }
          accumulate_grad(y, gy);
        }
        if (gate.requires_grad()) {
          Tensor gg = Tensor::zeros({plan->num_assignments}, y.dtype());
          T* o = gg.data<T>();
#pragma omp parallel for if (K * D > 32768)
          for (int64_t p = 0; p < K; ++p) {
            const T *r = pgo + tok[p] * D, *v = py + p * D;
            T dot = 0;
            for (int64_t j = 0; j < D; ++j) dot += r[j] * v[j];
            o[order[p]] = dot;
          }
          accumulate_grad(gate, gg);
        }
      });
    });
  return out;
}

}  // namespace moe
