// Switch aux-loss products built from recorded ops, so the gradient reaches the router through
// the mean probabilities P only (the load fractions f are counts, constants by definition).
#include "layers/moe/balance/aux_math.h"

#include "core/cpu/elementwise.h"
#include "core/cpu/reduce.h"

namespace moe {

Tensor aux_probabilities(const Tensor& scores, bool sigmoid_scores) {
  if (!sigmoid_scores) return scores;
  return div(scores, sum(scores, {1}, true));
}

Tensor switch_aux(const Tensor& probs, const std::vector<double>& loads, double total) {
  int64_t E = probs.size(1);
  MOE_CHECK(int64_t(loads.size()) == E, "balance.switch_aux", loads.size(), " loads for probabilities ",
            probs.shape_str());
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
  std::vector<double> f(seq_loads.size());
  for (size_t i = 0; i < f.size(); ++i) f[i] = seq_loads[i] / per_sequence_total;
  Tensor ft = Tensor::from_vector<double>(f, {B, E}).to(probs.dtype());
  Tensor P = mean(probs.contiguous().reshape({B, seq_len, E}), {1});  // [B, E]
  return mul_scalar(sum_all(mul(P, ft)), double(E) / double(B));
}

}  // namespace moe
