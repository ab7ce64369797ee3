// Counting-sort dispatch plan and the permute / combine kernels with their backward.
// Parallel loops write disjoint rows; every sum runs in the plan's fixed order (deterministic).
#include "layers/moe/dispatch.h"

#include "core/autograd.h"
#include "core/device.h"
#include "core/dispatch.h"
#include "layers/moe/host_ids.h"

namespace moe {

namespace {

// The plan from the ids in place (with_host_ids: i32 or i64 each, no converted copies).
template <class TI, class EI>
void fill_plan(DispatchPlan& plan, const TI* tok, const EI* ex, const std::vector<int64_t>& kept) {
  const char* op = "make_dispatch_plan";
  const int64_t A = plan.num_assignments, K = int64_t(kept.size()), E = plan.num_experts, T = plan.num_tokens;
  // Per expert and per token, the kept assignments, counted in one pass (checked as they come).
  auto& off = plan.offsets;
  auto& toff = plan.token_offsets;
  off.assign(size_t(E) + 1, 0);
  toff.assign(size_t(T) + 1, 0);
  for (int64_t i = 0; i < K; ++i) {
    const int64_t a = kept[size_t(i)];
    MOE_CHECK(a >= 0 && a < A && (i == 0 || a > kept[size_t(i) - 1]), op, "kept indices must be ascending in [0, ", A,
              "), got ", a, " at ", i);
    const int64_t e = ex[a], t = tok[a];
    MOE_CHECK(e >= 0 && e < E, op, "expert id ", e, " out of range [0, ", E, ")");
    MOE_CHECK(t >= 0 && t < T, op, "token id ", t, " out of range [0, ", T, ")");
    ++off[size_t(e) + 1];
    ++toff[size_t(t) + 1];
  }
  for (int64_t e = 0; e < E; ++e) off[size_t(e) + 1] += off[size_t(e)];
  for (int64_t t = 0; t < T; ++t) toff[size_t(t) + 1] += toff[size_t(t)];
  // Stable scatters: assignments visited in list order land in list order within their expert,
  // and each token's sorted positions in list order within the token.
  plan.order.resize(size_t(K));
  plan.token.resize(size_t(K));
  plan.token_slots.resize(size_t(K));
  std::vector<int64_t> fill(off.begin(), off.end() - 1), tfill(toff.begin(), toff.end() - 1);
  for (int64_t i = 0; i < K; ++i) {
    const int64_t a = kept[size_t(i)], t = tok[a], p = fill[size_t(ex[a])]++;
    plan.order[size_t(p)] = a;
    plan.token[size_t(p)] = t;
    plan.token_slots[size_t(tfill[size_t(t)]++)] = p;
  }
}

}  // namespace

DispatchPlanPtr make_dispatch_plan(const Tensor& token, const Tensor& expert, const std::vector<int64_t>& kept,
                                   int64_t num_tokens, int64_t num_experts) {
  const char* op = "make_dispatch_plan";
  MOE_CHECK(token.dim() == 1 && expert.dim() == 1 && token.numel() == expert.numel(), op,
            "expected token [A] and expert [A], got ", token.shape_str(), " and ", expert.shape_str());
  auto plan = std::make_shared<DispatchPlan>();
  plan->num_tokens = num_tokens;
  plan->num_experts = num_experts;
  plan->num_assignments = token.numel();
  with_host_ids(token, op, [&](const auto* tok) {
    with_host_ids(expert, op, [&](const auto* ex) { fill_plan(*plan, tok, ex, kept); });
  });
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
