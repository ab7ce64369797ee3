// Strategy "aux_loss": the Switch loss equals hand-computed values in every variant (micro_batch,
// per_sequence, global with loads summed over the data-parallel ranks), and its gradient passes
// an f64 check.
#include <gtest/gtest.h>

#include "parallel/communicator.h"
#include "tests/balance_test_helpers.h"
#include "tests/forwarding_communicator.h"

using namespace moe;
using namespace moe::test;

namespace {

// Four tokens, three experts; rows are distributions. Top-1 picks experts 0, 0, 1, 2.
RouterOutput hand_input(int64_t seq_len) {
  RouterOutput in;
  in.scores = Tensor::from_vector<double>({.6, .3, .1, .5, .2, .3, .1, .8, .1, .2, .2, .6}, {4, 3});
  in.logits = in.scores;
  in.num_experts = 3;
  in.top_k = 1;
  in.seq_len = seq_len;
  in.training = true;
  return in;
}

double aux_of(Balancer& b, const RouterOutput& in, double* scaled = nullptr) {
  Philox rng;
  Routing r = b.select(in, rng);
  std::vector<ExtraLoss> l = b.extra_losses(in, r);
  EXPECT_EQ(l.size(), 1u);
  EXPECT_EQ(l[0].name, "aux");
  if (scaled) *scaled = l[0].scaled.item_double();
  return l[0].unscaled;
}

}  // namespace

TEST(BalanceAuxLoss, MicroBatchHandComputed) {
  // loads [2,1,1] -> f = [.5,.25,.25]; P = [.35,.375,.275]; 3 * (.175 + .09375 + .06875)
  auto b = make_balancer(balance_config("aux_loss", 3, 1));
  double scaled;
  EXPECT_NEAR(aux_of(*b, hand_input(4), &scaled), 1.0125, 1e-12);
  EXPECT_NEAR(scaled, 0.010125, 1e-14);
}

TEST(BalanceAuxLoss, PerSequenceHandComputed) {
  // seq 0 (tokens 0,1): f = [1,0,0], P = [.55,.25,.2] -> 3 * .55 = 1.65
  // seq 1 (tokens 2,3): f = [0,.5,.5], P = [.15,.5,.35] -> 3 * .425 = 1.275; mean 1.4625
  MoeConfig cfg = balance_config("aux_loss", 3, 1);
  cfg.balance.aux_variant = "per_sequence";
  auto b = make_balancer(cfg);
  EXPECT_NEAR(aux_of(*b, hand_input(2)), 1.4625, 1e-12);
  EXPECT_NEAR(aux_of(*b, hand_input(4)), 1.0125, 1e-12);  // one sequence: the micro-batch value
  EXPECT_THROW(aux_of(*b, hand_input(3)), Error);         // 4 tokens are not whole sequences of 3
}

// A data-parallel group of two whose other rank always holds loads [1, 1, 2].
class SecondRankLoads final : public test::ForwardingCommunicator {
 public:
  SecondRankLoads() : ForwardingCommunicator(make_self_communicator()) {}
  using ForwardingCommunicator::all_reduce_sum;
  int size() const override { return 2; }
  void all_reduce_sum(double* d, size_t n) override {
    ASSERT_EQ(n, 3u);
    d[0] += 1, d[1] += 1, d[2] += 2;
  }
};

TEST(BalanceAuxLoss, GlobalUsesReducedAccumulatedLoadsAndResetsOnUpdate) {
  MoeConfig cfg = balance_config("aux_loss", 3, 1);
  cfg.balance.aux_variant = "global";
  auto b = make_balancer(cfg);
  EXPECT_NEAR(aux_of(*b, hand_input(4)), 1.0125, 1e-12);  // identity reducer, one micro-batch
  b->update({2, 1, 1});
  // A second "rank" contributes loads [1,1,2] each time the loads are all-reduced.
  b->set_communicator(std::make_shared<SecondRankLoads>());
  // [3,2,3]/8 . [.35,.375,.275] * 3
  EXPECT_NEAR(aux_of(*b, hand_input(4)), 0.984375, 1e-12);
  // second micro-batch of the step: accumulated [4,2,2] + [1,1,2] = [5,3,4]/12
  EXPECT_NEAR(aux_of(*b, hand_input(4)), 0.99375, 1e-12);
  EXPECT_EQ(b->state().at("global_load_accumulator"), (std::vector<double>{4, 2, 2}));
  RouterOutput ev = hand_input(4);
  ev.training = false;  // eval: local loads only, nothing accumulated
  EXPECT_NEAR(aux_of(*b, ev), 1.0125, 1e-12);
  b->update({});
  EXPECT_NEAR(aux_of(*b, hand_input(4)), 0.984375, 1e-12);
  auto fresh = make_balancer(cfg);
  fresh->load_state(b->state());
  EXPECT_EQ(fresh->state(), b->state());
}

TEST(BalanceAuxLoss, GradcheckWrtLogitsEveryVariant) {
  for (std::string variant : {"micro_batch", "per_sequence", "global"})
    for (bool sig : {false, true}) {
      MoeConfig cfg = balance_config("aux_loss", 5, 2);
      cfg.balance.aux_variant = variant;
      cfg.balance.aux_alpha = 0.3;
      cfg.score_function = sig ? "sigmoid" : "softmax";
      auto b = make_balancer(cfg);
      Tensor x = randn_f64({10, 5}, 77);
      EXPECT_GRADCHECK(
          [&](const std::vector<Tensor>& v) {
            RouterOutput in = router_output(v[0], 5, 2, /*training=*/false, 5, sig);
            Philox rng;
            Routing r = b->select(in, rng);
            return b->extra_losses(in, r)[0].scaled;
          },
          {x}, 1e-6, 1e-9, 1e-6);
    }
}

TEST(BalanceAuxLoss, GradientReachesTheRouterOnlyThroughP) {
  // d/dP_i of alpha * E * sum f_i P_i is alpha * E * f_i: check on scores fed as a leaf.
  auto b = make_balancer(balance_config("aux_loss", 3, 1));
  RouterOutput in = hand_input(4);
  in.scores = in.scores.clone();
  in.scores.set_requires_grad(true);
  Philox rng;
  Routing r = b->select(in, rng);
  b->extra_losses(in, r)[0].scaled.backward();
  std::vector<double> g = values(in.scores.grad());
  const double f[3] = {.5, .25, .25};
  for (int t = 0; t < 4; ++t)
    for (int e = 0; e < 3; ++e) EXPECT_NEAR(g[size_t(t * 3 + e)], 0.01 * 3 * f[e] / 4, 1e-15);
}
