// Switch aux-loss products built from recorded ops, so the gradient reaches the router through
// the mean probabilities P only (the load fractions f are counts, constants by definition).
// Probabilities on the cuda device (a device-routed layer) use the device ops (switch_aux,
// row_normalize); the loads come up as i32 counts.
#include "layers/moe/balance/aux_math.h"

#include <cmath>

#include "core/cpu/elementwise.h"
#include "core/cpu/reduce.h"
#include "core/device.h"

namespace moe {
namespace {

bool on_cuda(const Tensor& t) { return t.device() == Device::cuda; }

// Load counts [rows, E] as an i32 device tensor (the device switch_aux takes counts).
Tensor device_counts(const std::vector<double>& loads, int64_t rows, int64_t E) {
  std::vector<int32_t> c(loads.size());
  for (size_t i = 0; i < c.size(); ++i) {
    MOE_CHECK(loads[i] >= 0 && loads[i] == std::floor(loads[i]) && loads[i] < 2147483648.0, "balance.switch_aux",
              "load ", loads[i], " of expert ", int64_t(i) % E, " is not a count");
    c[i] = int32_t(loads[i]);
  }
  return Tensor::from_vector<int32_t>(c, {rows, E}).to(Device::cuda);
}

}  // namespace

Tensor aux_probabilities(const Tensor& scores, bool sigmoid_scores) {
  if (!sigmoid_scores) return scores;
  if (on_cuda(scores)) return cuda_backend("balance.aux_probabilities").row_normalize(scores);
  return div(scores, sum(scores, {1}, true));
}

Tensor switch_aux(const Tensor& probs, const std::vector<double>& loads, double total) {
  int64_t E = probs.size(1);
  MOE_CHECK(int64_t(loads.size()) == E, "balance.switch_aux", loads.size(), " loads for probabilities ",
            probs.shape_str());
  if (on_cuda(probs))  // total 0 means no assignments: every f_i is 0 either way
    return cuda_backend("balance.switch_aux")
        .switch_aux(probs, device_counts(loads, 1, E), total > 0 ? total : 1.0, probs.size(0));
  std::vector<double> f(loads.size());
  for (size_t i = 0; i < f.size(); ++i) f[i] = total > 0 ? loads[i] / total : 0.0;
  Tensor ft = Tensor::from_vector<double>(f, {E}).to(probs.dtype());
  Tensor P = mean(probs, {0});  // [E]
  return mul_scalar(sum_all(mul(P, ft)), double(E));
}

Tensor per_sequence_aux(const Tensor& probs, int64_t seq_len, const std::vector<double>& seq_loads,
                        double per_sequence_total) {
  int64_t T = probs.size(0), E = probs.size(1);
  MOE_CHECK(seq_len >= 1 && T % seq_len == 0, "router.aux_variant", "per_sequence needs T (", T,
            ") to be a multiple of seq_len (", seq_len, ")");
  int64_t B = T / seq_len;
  MOE_CHECK(int64_t(seq_loads.size()) == B * E, "balance.per_sequence_aux", seq_loads.size(),
            " loads for ", B, " sequences x ", E, " experts");
  if (on_cuda(probs))
    return cuda_backend("balance.per_sequence_aux")
        .switch_aux(probs, device_counts(seq_loads, B, E), per_sequence_total, seq_len);
  std::vector<double> f(seq_loads.size());
  for (size_t i = 0; i < f.size(); ++i) f[i] = seq_loads[i] / per_sequence_total;
  Tensor ft = Tensor::from_vector<double>(f, {B, E}).to(probs.dtype());
  Tensor P = mean(probs.contiguous().reshape({B, seq_len, E}), {1});  // [B, E]
  return mul_scalar(sum_all(mul(P, ft)), double(E) / double(B));
}

}  // namespace moe
