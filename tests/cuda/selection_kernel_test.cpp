// Expert-choice and top-p selection kernels against the CPU balancers' routings (exactly, with
// planted ties), and the routing-entropy loss against the CPU ops in double with autograd.
#include <gtest/gtest.h>

#include <cmath>

#include "core/cuda/memory.h"
#include "core/cuda/selection.h"
#include "core/error.h"
#include "core/ops.h"
#include "tests/balance_test_helpers.h"
#include "tests/cuda/kernel_test_util.h"

using namespace moe;
using namespace moe::cuda;
using namespace moe::test;

namespace {

// Scores rounded to steps of 1/16, so many (token, expert) scores tie exactly.
RouterOutput tied_scores(long T, int E, int k, unsigned seed) {
  auto s = random_normal(static_cast<size_t>(T * E), seed);
  for (auto& v : s) v = std::round(v * 16.0f) / 16.0f;
  RouterOutput in;
  in.logits = Tensor::from_vector<float>(s, {T, E});
  in.scores = in.logits;
  in.num_experts = E;
  in.top_k = k;
  in.seq_len = T;
  in.training = true;
  return in;
}

void check_expert_choice(long T, int E, double c) {
  MoeConfig cfg = balance_config("expert_choice", E, 2);
  cfg.balance.expert_choice_capacity = c;
  RouterOutput in = tied_scores(T, E, 2, 141);
  Philox rng;
  Routing r = make_balancer(cfg)->select(in, rng);
  std::vector<uint8_t> want(static_cast<size_t>(T * E), 0);
  auto tok = r.token.to_vector<int64_t>(), ex = r.expert.to_vector<int64_t>();
  for (size_t a = 0; a < tok.size(); ++a) want[static_cast<size_t>(tok[a] * E + ex[a])] = 1;
  const long C = long(std::ceil(double(T) * c / E));
  DeviceBuffer<float> ds(in.scores.to_vector<float>());
  DeviceBuffer<uint8_t> chosen(static_cast<size_t>(T * E));
  expert_choice_select(ds.get(), T, E, C, chosen.get());
  EXPECT_EQ(chosen.to_host(), want) << "T = " << T << ", c = " << c;
  EXPECT_EQ(long(tok.size()), C * E);
}

TEST(CudaSelection, ExpertChoiceMatchesCpuBalancerWithTies) {
  const long T = 83;
  const int E = 7;
  for (double c : {1.0, 2.5}) check_expert_choice(T, E, c);
  // 1024-thread blocks: 16384 scores per expert in registers, the rest re-read in every pass
  check_expert_choice(16411, 2, 1.0);
  DeviceBuffer<float> ds(static_cast<size_t>(T * E));
  DeviceBuffer<uint8_t> chosen(static_cast<size_t>(T * E));
  EXPECT_THROW(expert_choice_select(ds.get(), T, E, T + 1, chosen.get()), Error);
}

TEST(CudaSelection, TopPMatchesCpuBalancerWithTies) {
  const long T = 71;
  const int E = 9;
  for (double p : {0.4, 0.75}) {
    MoeConfig cfg = balance_config("top_p", E, 2);
    cfg.balance.top_p_threshold = p;
    // Softmax of tied logits: tied scores within a row, as the router makes them.
    RouterOutput in = tied_scores(T, E, 2, 142);
    in.scores = softmax(in.logits, -1);
    Philox rng;
    Routing r = make_balancer(cfg)->select(in, rng);
    DeviceBuffer<float> ds(in.scores.contiguous().to_vector<float>());
    DeviceBuffer<int32_t> ranked(static_cast<size_t>(T * E)), counts(static_cast<size_t>(T));
    top_p_select(ds.get(), T, E, p, ranked.get(), counts.get());
    auto rk = ranked.to_host();
    auto cn = counts.to_host();
    std::vector<int64_t> got_token, got_expert;
    for (long t = 0; t < T; ++t)
      for (int j = 0; j < E; ++j) {
        const int32_t e = rk[static_cast<size_t>(t * E + j)];
        ASSERT_EQ(e >= 0, j < cn[static_cast<size_t>(t)]) << "token " << t << " rank " << j;
        if (e >= 0) got_token.push_back(t), got_expert.push_back(e);
      }
    EXPECT_EQ(got_token, r.token.to_vector<int64_t>()) << "p = " << p;
    EXPECT_EQ(got_expert, r.expert.to_vector<int64_t>()) << "p = " << p;
    EXPECT_GT(got_token.size(), size_t(T)) << "some tokens need more than one expert";
  }
}

TEST(CudaSelection, RoutingEntropyMatchesCpuForwardAndBackward) {
  const long T = 61;
  const int E = 11;
  auto logits = random_normal(static_cast<size_t>(T * E), 143, 4.0f);  // sharp rows: tiny scores too
  Tensor s =
      softmax(Tensor::from_vector<double>(std::vector<double>(logits.begin(), logits.end()), {T, E}), -1).detach();
  s.set_requires_grad(true);
  Tensor ent = neg(mean_all(sum(mul(s, log(add_scalar(s, 1e-30))), {1})));
  ent.backward(Tensor::scalar(0.3, DType::f64));
  auto sv = s.detach().to_double_vector();
  DeviceBuffer<float> ds(std::vector<float>(sv.begin(), sv.end())), loss(1), grad(static_cast<size_t>(T * E));
  routing_entropy_forward(ds.get(), T, E, loss.get());
  routing_entropy_backward(ds.get(), 0.3f, T, E, grad.get());
  EXPECT_NEAR(loss.to_host()[0], ent.item_double(), 1e-5 * ent.item_double());
  // d/ds of s log s is log s + 1: large for tiny s, where fp32 s carries relative error 6e-8.
  EXPECT_TRUE(all_near(grad.to_host(), s.grad().to_double_vector(), 1e-5, 1e-5));
}

}  // namespace
