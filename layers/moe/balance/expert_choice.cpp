// Strategy "expert_choice" (Zhou et al. 2022): each expert takes its top-C tokens by score,
// C = ceil(T c / E). Perfect balance by construction; some tokens get no expert, others several.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/autograd.h"
#include "core/device.h"
#include "layers/moe/balance/device_selection.h"
#include "layers/moe/balance/global_batch.h"
#include "layers/moe/balance/strategies.h"

namespace moe {
namespace {

// NON-CAUSAL: which experts a token gets depends on every other token of the batch (the same in
// eval), so it does not fit autoregressive decoding as is; offered for comparison, as published.
// Gates: s of the chosen (token, expert) pairs, not renormalized. Ties go to the lower token.
// Assignments are listed token-major (token order, experts ascending within a token).
// Data parallelism, balance.scope = "global" (default): each expert picks its top C of the global
// micro-batch (C from the global token count): the experts' score columns of every rank's tokens
// are split over the ranks (share_columns), each rank picks for its own experts, and the picks go
// back to the ranks holding the tokens (return_columns): the single process's routing, with
// T_global x E / W of the selection work per rank. scope = "local": each expert picks
// C = ceil(T_rank c / E) of the rank's own tokens.
// On the device (routes_on_device(): the batch is the process's own) the same rule runs there
// (core/cuda/selection.h: a block per expert); the [T, E] 0 / 1 mask comes down as bytes and the
// chosen pairs' scores as one small gather (no autograd); the gates stay on the device.
class ExpertChoiceBalancer final : public Balancer {
 public:
  explicit ExpertChoiceBalancer(const MoeConfig& cfg) : cfg_(cfg) {}
  std::string name() const override { return "expert_choice"; }

  Routing select(const RouterOutput& in, Philox&) override {
    check_router_output(in, cfg_.num_experts, "balance.expert_choice");
    if (on_device(in)) return select_on_device(in);
    const int64_t E = cfg_.num_experts, local_T = in.scores.size(0);
    const std::vector<double> s = in.scores.detach().contiguous().to_double_vector();
    std::vector<uint8_t> chosen(size_t(local_T * E), 0);  // this rank's tokens x experts
    int64_t C = 0;
    if (Communicator* comm = batch_communicator(cfg_.balance.scope)) {
      ColumnShare sh = share_columns(*comm, s, local_T, E, "balance.expert_choice");  // NaN: every rank throws
      const int64_t T = sh.total, own = sh.col_end - sh.col_begin;
      C = capacity(T);
      std::vector<double> picks(size_t(own * T), 0.0);
      top_per_column(T, own, C, [&](int64_t i, int64_t j) { return sh.columns[size_t(j * T + i)]; },
                     [&](int64_t i, int64_t j) { picks[size_t(j * T + i)] = 1.0; });
      const std::vector<double> back = return_columns(*comm, sh, picks, E);
      for (size_t i = 0; i < back.size(); ++i) chosen[i] = back[i] != 0.0;
    } else {
      for (size_t i = 0; i < s.size(); ++i)
        MOE_CHECK(!std::isnan(s[i]), "balance.expert_choice", "router scores contain NaN (token ", int64_t(i) / E,
                  ", expert ", int64_t(i) % E, ")");
      C = capacity(local_T);
      top_per_column(local_T, E, C, [&](int64_t i, int64_t j) { return s[size_t(i * E + j)]; },
                     [&](int64_t i, int64_t j) { chosen[size_t(i * E + j)] = 1; });
    }
    Selection sel;
    sel.reserve(size_t(std::min(C * E, local_T * E)));
    for (int64_t t = 0; t < local_T; ++t)
      for (int64_t e = 0; e < E; ++e)
        if (chosen[size_t(t * E + e)]) sel.push(t, e, s[size_t(t * E + e)]);
    return build_routing(in.scores, sel, GateOptions{false, cfg_.gate_scale});
  }

  bool routes_on_device() const override { return batch_communicator(cfg_.balance.scope) == nullptr; }

 private:
  Routing select_on_device(const RouterOutput& in) {
    CudaBackend& be = cuda_backend("balance.expert_choice");
    const int64_t T = in.scores.size(0), E = cfg_.num_experts;
    const std::vector<uint8_t> chosen = be.expert_choice_select(in.scores, capacity(T));
    Selection sel;
    std::vector<int32_t> flat;  // t * E + e of the chosen pairs, token-major
    for (int64_t i = 0; i < T * E; ++i)
      if (chosen[size_t(i)]) sel.push(i / E, i % E, 0.0), flat.push_back(int32_t(i));
    // Their scores (the host path's selection score, fp32): one gather, A floats down.
    const std::vector<float> v =
        be.gather(in.scores.detach(), Tensor::from_vector(flat, {int64_t(flat.size())}).to(Device::cuda))
            .to_vector<float>();
    std::copy(v.begin(), v.end(), sel.score.begin());
    return build_routing(in.scores, sel, GateOptions{false, cfg_.gate_scale});
  }

  int64_t capacity(int64_t T) const {
    return std::min<int64_t>(T, int64_t(std::ceil(double(T) * cfg_.balance.expert_choice_capacity /
                                                  double(cfg_.num_experts))));
  }

  // For each of `cols` columns, mark(i, j) for the C largest value(i, j) over i in [0, T); ties go
  // to the lower i, so the picks do not depend on how the tokens are laid out in memory.
  template <class Value, class Mark>
  static void top_per_column(int64_t T, int64_t cols, int64_t C, Value value, Mark mark) {
#pragma omp parallel if (T * cols >= 65536)  // a team costs more than small batches take
    {
      std::vector<int64_t> order(static_cast<size_t>(T));
#pragma omp for
      for (int64_t j = 0; j < cols; ++j) {
        std::iota(order.begin(), order.end(), 0);
        auto better = [&](int64_t a, int64_t b) {
          double va = value(a, j), vb = value(b, j);
          return va > vb || (va == vb && a < b);
        };
        std::nth_element(order.begin(), order.begin() + (C - 1), order.end(), better);
        for (int64_t r = 0; r < C; ++r) mark(order[size_t(r)], j);
      }
    }
  }

  MoeConfig cfg_;
};

}  // namespace

std::unique_ptr<Balancer> make_expert_choice_balancer(const MoeConfig& cfg) {
  return std::make_unique<ExpertChoiceBalancer>(cfg);
}

}  // namespace moe
