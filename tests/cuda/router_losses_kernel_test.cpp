// Router loss kernels against the CPU: router_z_loss, switch_aux and per_sequence_aux (layers/moe)
// in double with their autograd backward, and the loss-free balancer's bias updates bit for bit.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>

#include "core/cuda/memory.h"
#include "core/cuda/router_losses.h"
#include "core/error.h"
#include "core/ops.h"
#include "layers/moe/balance/aux_math.h"
#include "layers/moe/balance/balancer.h"
#include "layers/moe/router.h"
#include "tests/cuda/kernel_test_util.h"

using namespace moe;
using namespace moe::cuda;
using namespace moe::test;

namespace {

Tensor f64(const std::vector<float>& v, const Shape& s) {
  return Tensor::from_vector<double>(std::vector<double>(v.begin(), v.end()), s);
}

TEST(CudaRouterLosses, ZLossMatchesCpuForwardAndBackward) {
  const long T = 77;
  const int E = 13;
  auto x = random_normal(static_cast<size_t>(T * E), 121, 3.0f);
  Tensor tx = f64(x, {T, E});
  tx.set_requires_grad(true);
  Tensor z = router_z_loss(tx);
  z.backward(Tensor::scalar(0.7, DType::f64));
  DeviceBuffer<float> dx(x), lse(static_cast<size_t>(T)), loss(1), grad(static_cast<size_t>(T * E));
  router_z_loss_forward(dx.get(), T, E, lse.get(), loss.get());
  router_z_loss_backward(dx.get(), lse.get(), 0.7f, T, E, grad.get());
  EXPECT_NEAR(loss.to_host()[0], z.item_double(), 1e-5 * z.item_double());
  EXPECT_TRUE(all_near(grad.to_host(), tx.grad().to_double_vector(), 1e-6, 1e-5));
}

TEST(CudaRouterLosses, SwitchAuxMatchesCpuForwardAndBackward) {
  const long T = 91;
  const int E = 11, k = 2;
  auto logits = random_normal(static_cast<size_t>(T * E), 122);
  for (long t = 0; t < T; ++t)
    logits[static_cast<size_t>(t * E)] += 2.0f, logits[static_cast<size_t>(t * E + 1)] += 2.0f;
  Tensor probs = softmax(f64(logits, {T, E}), -1).detach();  // experts 0 and 1 favoured, as the loads
  probs.set_requires_grad(true);
  std::mt19937 gen(uint32_t(test_seed(123)));
  std::vector<int32_t> loads(static_cast<size_t>(E), 0);
  for (long a = 0; a < T * k; ++a) loads[gen() % (a % 3 == 0 ? 2u : unsigned(E))]++;  // experts 0, 1 hot
  const double total = double(T * k);
  Tensor aux = switch_aux(probs, std::vector<double>(loads.begin(), loads.end()), total);
  aux.backward(Tensor::scalar(1.3, DType::f64));
  auto p = probs.detach().to_double_vector();
  DeviceBuffer<float> dp(std::vector<float>(p.begin(), p.end())), loss(1), grad(static_cast<size_t>(T * E));
  DeviceBuffer<int32_t> dl(loads);
  switch_aux_forward(dp.get(), dl.get(), total, T, E, loss.get());
  switch_aux_backward(dl.get(), total, 1.3f, T, E, grad.get());
  EXPECT_GT(aux.item_double(), 1.5) << "loads and probabilities skewed the same way";
  EXPECT_NEAR(loss.to_host()[0], aux.item_double(), 1e-5 * aux.item_double());
  EXPECT_TRUE(all_near(grad.to_host(), probs.grad().to_double_vector(), 1e-7, 1e-5));
}

TEST(CudaRouterLosses, PerSequenceAuxMatchesCpuForwardAndBackward) {
  const long B = 3, S = 29, T = B * S;
  const int E = 9, k = 2;
  Tensor probs = softmax(f64(random_normal(static_cast<size_t>(T * E), 125, 2.0f), {T, E}), -1).detach();
  probs.set_requires_grad(true);
  std::mt19937 gen(uint32_t(test_seed(126)));
  std::vector<int32_t> loads(static_cast<size_t>(B * E), 0);
  for (long b = 0; b < B; ++b)
    for (long a = 0; a < S * k; ++a)
      loads[static_cast<size_t>(b * E + gen() % unsigned(E - b))]++;  // differ per sequence
  const double total = double(S * k);
  Tensor aux = per_sequence_aux(probs, S, std::vector<double>(loads.begin(), loads.end()), total);
  aux.backward(Tensor::scalar(0.9, DType::f64));
  auto p = probs.detach().to_double_vector();
  DeviceBuffer<float> dp(std::vector<float>(p.begin(), p.end())), loss(1), grad(static_cast<size_t>(T * E));
  DeviceBuffer<int32_t> dl(loads);
  sequence_aux_forward(dp.get(), dl.get(), total, T, S, E, loss.get());
  sequence_aux_backward(dl.get(), total, 0.9f, T, S, E, grad.get());
  EXPECT_NEAR(loss.to_host()[0], aux.item_double(), 1e-5 * aux.item_double());
  EXPECT_TRUE(all_near(grad.to_host(), probs.grad().to_double_vector(), 1e-7, 1e-5));
  EXPECT_THROW(sequence_aux_forward(dp.get(), dl.get(), total, T, 28, E, loss.get()), Error);
}

TEST(CudaRouterLosses, LossFreeBiasUpdateIsBitExactWithTheBalancer) {
  const int E = 37;
  for (const char* rule : {"sign", "proportional"}) {
    MoeConfig cfg;
    cfg.num_experts = E;
    cfg.top_k = 2;
    cfg.balance.strategy = "loss_free";
    cfg.balance.bias_update = rule;
    cfg.balance.bias_update_rate = 1.7e-3;
    auto balancer = make_balancer(cfg);
    DeviceBuffer<float> bias(std::vector<float>(static_cast<size_t>(E), 0.0f));
    std::mt19937 gen(uint32_t(test_seed(124)));
    for (int step = 0; step < 4; ++step) {
      std::vector<double> loads(static_cast<size_t>(E));
      for (auto& l : loads) l = double(gen() % 50);
      loads[3] = 25;  // can equal the mean: sign(0) = 0
      balancer->update(loads);
      DeviceBuffer<float> dl(std::vector<float>(loads.begin(), loads.end()));
      loss_free_bias_update(dl.get(), E, float(cfg.balance.bias_update_rate), std::string(rule) == "sign", bias.get());
    }
    auto want = balancer->state_vector();
    auto got = bias.to_host();
    for (int e = 0; e < E; ++e)
      ASSERT_EQ(got[static_cast<size_t>(e)], float(want[static_cast<size_t>(e)])) << rule << " expert " << e;
    // The updates moved the biases (one expert's four signs may cancel: ask for any expert).
    EXPECT_TRUE(std::any_of(got.begin(), got.end(), [](float b) { return b != 0.0f; })) << rule;
  }
}

}  // namespace
