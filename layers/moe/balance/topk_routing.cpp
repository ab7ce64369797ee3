// Row-wise top-k, n-th largest and the Routing builder shared by all strategies. Selection runs
// on raw arrays with recording off; only the gate gather and its renormalization are recorded.
#include "layers/moe/balance/topk_routing.h"

#include <algorithm>
#include <cmath>
#include <functional>

#include "core/autograd.h"
#include "core/device.h"
#include "core/cpu/elementwise.h"
#include "core/cpu/index.h"
#include "core/cpu/reduce.h"
#include "core/dispatch.h"

namespace moe {

template <class T>
void topk_rows(const T* v, int64_t rows, int64_t cols, int64_t k, int64_t* idx) {
  // Insertion into a sorted k-slot list whose values stay in a local buffer: k is small (1..8)
  // next to cols, so this beats a sort. A strictly-greater test keeps the earlier (lower) index
  // ahead on ties.
#pragma omp parallel if (rows * cols > 65536)
  {
    std::vector<T> top(static_cast<size_t>(k));
#pragma omp for
    for (int64_t r = 0; r < rows; ++r) {
      const T* row = v + r * cols;
      int64_t* out = idx + r * k;
      int64_t filled = 0;
      for (int64_t j = 0; j < cols; ++j) {
        T x = row[j];
        if (filled == k && !(x > top[size_t(k - 1)])) continue;
        int64_t pos = filled < k ? filled++ : k - 1;
        while (pos > 0 && x > top[size_t(pos - 1)]) {
          top[size_t(pos)] = top[size_t(pos - 1)];
          out[pos] = out[pos - 1];
          --pos;
        }
        top[size_t(pos)] = x;
        out[pos] = j;
      }
    }
  }
}
template void topk_rows<float>(const float*, int64_t, int64_t, int64_t, int64_t*);
template void topk_rows<double>(const double*, int64_t, int64_t, int64_t, int64_t*);

double nth_largest(double* v, int64_t len, int64_t n) {
  std::nth_element(v, v + (n - 1), v + len, std::greater<double>());
  return v[n - 1];
}

Selection select_topk(const Tensor& values, int64_t k, const char* where) {
  MOE_CHECK(values.dim() == 2, where, "expected a [T, E] score matrix, got ", values.shape_str());
  int64_t T = values.size(0), C = values.size(1);
  MOE_CHECK(k >= 1 && k <= C, where, "top-k needs 1 <= k <= ", C, ", got k = ", k);
  Tensor v = values.detach().contiguous();
  std::vector<int64_t> idx(size_t(T * k));
  Selection sel;
  sel.token.resize(size_t(T * k));
  sel.expert.resize(size_t(T * k));
  sel.score.resize(size_t(T * k));
  dispatch_float(v.dtype(), where, [&](auto tag) {
    using S = decltype(tag);
    const S* p = v.data<S>();
    for (int64_t i = 0; i < T * C; ++i)
      MOE_CHECK(!std::isnan(p[i]), where, "router scores contain NaN (token ", i / C, ", expert ", i % C, ")");
    topk_rows<S>(p, T, C, k, idx.data());
    for (int64_t t = 0; t < T; ++t)
      for (int64_t r = 0; r < k; ++r) {
        size_t a = size_t(t * k + r);
        sel.token[a] = t;
        sel.expert[a] = idx[a];
        sel.score[a] = double(p[t * C + idx[a]]);
      }
  });
  return sel;
}

Tensor shifted_scores(const Tensor& scores, const std::vector<float>& bias, double sign) {
  NoGradGuard ng;
  MOE_CHECK(int64_t(bias.size()) == scores.size(1), "balance.shifted_scores", "bias of ", bias.size(),
            " entries for scores ", scores.shape_str());
  Tensor b = Tensor::from_vector<float>(bias, {int64_t(bias.size())}).to(scores.dtype());
  return sign > 0 ? add(scores.detach(), b) : sub(scores.detach(), b);
}

namespace {

// build_routing's gate on the device (see topk_routing.h).
Tensor device_gates(const Tensor& gate_source, const Selection& sel, const GateOptions& opt) {
  const char* op = "balance.build_routing";
  const int64_t T = gate_source.size(0), C = gate_source.size(1), A = int64_t(sel.size());
  std::vector<int64_t> count(size_t(T), 0);
  for (int64_t a = 0; a < A; ++a) {
    const int64_t t = sel.token[size_t(a)], e = sel.expert[size_t(a)];
    MOE_CHECK(t >= 0 && t < T && e >= 0 && e < C, op, "assignment ", a, " (token ", t, ", expert ", e,
              ") outside [", T, ", ", C, "]");
    MOE_CHECK(a == 0 || t >= sel.token[size_t(a - 1)], op, "a device gate source needs a token-major selection");
    ++count[size_t(t)];
  }
  int64_t K = 1;
  for (int64_t c : count) K = std::max(K, c);
  std::vector<int32_t> ids(size_t(T * K), -1), at(static_cast<size_t>(A));
  std::vector<int64_t> slot(size_t(T), 0);
  for (int64_t a = 0; a < A; ++a) {
    const int64_t t = sel.token[size_t(a)], pos = t * K + slot[size_t(t)]++;
    ids[size_t(pos)] = int32_t(sel.expert[size_t(a)]);
    at[size_t(a)] = int32_t(pos);
  }
  CudaBackend& be = cuda_backend(op);
  Tensor padded = be.router_gates(gate_source, Tensor::from_vector<int32_t>(ids, {T, K}).to(Device::cuda),
                                  opt.renormalize, opt.scale);
  return be.gather(padded, Tensor::from_vector<int32_t>(at, {A}).to(Device::cuda));
}

}  // namespace

Routing build_routing(const Tensor& gate_source, const Selection& sel, const GateOptions& opt) {
  int64_t T = gate_source.size(0), C = gate_source.size(1), A = int64_t(sel.size());
  Routing r;
  r.token = Tensor::from_vector<int64_t>(sel.token, {A});
  r.expert = Tensor::from_vector<int64_t>(sel.expert, {A});
  r.score = Tensor::empty({A}, gate_source.dtype());
  dispatch_float(gate_source.dtype(), "balance.build_routing", [&](auto tag) {
    using S = decltype(tag);
    S* p = r.score.data<S>();
    for (int64_t a = 0; a < A; ++a) p[a] = S(sel.score[size_t(a)]);
  });
  if (gate_source.device() == Device::cuda) {
    r.gate = device_gates(gate_source, sel, opt);
    return r;
  }
  std::vector<int64_t> flat(static_cast<size_t>(A));
  for (int64_t a = 0; a < A; ++a) flat[size_t(a)] = sel.token[size_t(a)] * C + sel.expert[size_t(a)];
  Tensor src = gate_source.contiguous();
  Tensor gate = index_select(src.reshape({T * C}), 0, Tensor::from_vector<int64_t>(flat, {A}));
  if (opt.renormalize && A > 0) {
    Tensor m = Tensor::zeros({T, C}, gate_source.dtype());
    dispatch_float(m.dtype(), "balance.build_routing", [&](auto tag) {
      using S = decltype(tag);
      S* p = m.data<S>();
      for (int64_t f : flat) p[f] = S(1);
    });
    Tensor per_token = sum(mul(src, m), {1});  // [T]: sum of each token's chosen gates
    gate = div(gate, index_select(per_token, 0, r.token));
  }
  if (opt.scale != 1.0) gate = mul_scalar(gate, opt.scale);
  r.gate = gate;
  return r;
}

void check_router_output(const RouterOutput& in, int64_t cols, const char* where) {
  MOE_CHECK(in.scores.defined() && in.scores.dim() == 2, where, "scores must be [T, ", cols, "]",
            in.scores.defined() ? ", got " + in.scores.shape_str() : std::string(", got none"));
  MOE_CHECK(in.scores.size(1) == cols && in.scores.size(0) >= 1, where, "scores must be [T, ", cols,
            "] with T >= 1, got ", in.scores.shape_str());
  MOE_CHECK(in.scores.dtype() == DType::f32 || in.scores.dtype() == DType::f64, where,
            "scores must be f32 or f64 (routing math is fp32), got ", dtype_name(in.scores.dtype()));
  if (in.logits.defined())
    MOE_CHECK(in.logits.shape() == in.scores.shape(), where, "logits ", in.logits.shape_str(),
              " and scores ", in.scores.shape_str(), " must have the same shape");
}

std::vector<double> routing_loads(const Routing& r, int64_t num_experts) {
  std::vector<double> loads(size_t(num_experts), 0.0);
  Tensor e = r.expert.contiguous();
  const int64_t* p = e.data<int64_t>();
  for (int64_t a = 0; a < e.numel(); ++a) loads[size_t(p[a])] += 1.0;
  return loads;
}

}  // namespace moe
