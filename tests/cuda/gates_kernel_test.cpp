// Gate kernels against build_routing on the CPU (f64, autograd): plain and renormalized gates
// with a scale, with null experts dropped, forward and the backward into the scores.
#include <gtest/gtest.h>

#include "core/cuda/gates.h"
#include "core/cuda/memory.h"
#include "core/cuda/router.h"
#include "core/ops.h"
#include "layers/moe/balance/topk_routing.h"
#include "tests/cuda/kernel_test_util.h"

using namespace moe;
using namespace moe::cuda;
using namespace moe::test;

namespace {

// T tokens over C router outputs, of which the first E are real experts (the rest null). Returns
// the number of renormalized tokens with one real expert kept, whose score grad must be exactly 0.
int check_gates(long T, int C, int E, int k, bool renormalize, double scale) {
  auto logits = random_normal(static_cast<size_t>(T * C), 151);
  Tensor s =
      softmax(Tensor::from_vector<double>(std::vector<double>(logits.begin(), logits.end()), {T, C}), -1).detach();
  s.set_requires_grad(true);
  Selection all = select_topk(s, k, "test"), real;
  for (size_t a = 0; a < all.size(); ++a)
    if (all.expert[a] < E) real.push(all.token[a], all.expert[a], all.score[a]);
  Routing r = build_routing(s, real, GateOptions{renormalize, scale});
  auto dg_all = random_normal(static_cast<size_t>(T * k), 152);
  std::vector<double> dg_real;
  for (size_t a = 0; a < all.size(); ++a)
    if (all.expert[a] < E) dg_real.push_back(dg_all[a]);
  r.gate.backward(Tensor::from_vector<double>(dg_real, {long(dg_real.size())}));

  auto sv = s.detach().to_double_vector();
  DeviceBuffer<float> ds(std::vector<float>(sv.begin(), sv.end())), vals(static_cast<size_t>(T * k)),
      gates(static_cast<size_t>(T * k)), dgates(dg_all), dscores(static_cast<size_t>(T * C));
  DeviceBuffer<int32_t> idx(static_cast<size_t>(T * k));
  router_topk(ds.get(), vals.get(), idx.get(), T, C, k);
  gates_forward(ds.get(), idx.get(), T, C, k, E, renormalize, float(scale), gates.get());
  // The null slots' incoming gradient must not matter: poison it.
  auto ids = idx.to_host();
  auto dgh = dg_all;
  for (size_t a = 0; a < ids.size(); ++a)
    if (ids[a] >= E) dgh[a] = 1e9f;
  DeviceBuffer<float> dgates_poisoned(dgh);
  gates_backward(ds.get(), idx.get(), dgates_poisoned.get(), T, C, k, E, renormalize, float(scale), dscores.get());

  auto g = gates.to_host();
  std::vector<float> g_real;
  for (size_t a = 0; a < ids.size(); ++a) {
    EXPECT_EQ(ids[a], all.expert[a]) << "slot " << a;
    if (ids[a] != all.expert[a]) return 0;
    if (ids[a] >= E)
      EXPECT_EQ(g[a], 0.0f) << "a null slot's gate";
    else
      g_real.push_back(g[a]);
  }
  const std::string what = std::string(renormalize ? "renormalized" : "plain") + " scale " + std::to_string(scale);
  EXPECT_TRUE(all_near(g_real, r.gate.to_double_vector(), 1e-6, 1e-5)) << what;
  // A renormalized score grad is a difference of terms of the size of the gate grads, exactly 0
  // for some entries: fp32 leaves up to a few ulps of those terms (1.9e-6 seen on a fresh seed).
  const std::vector<float> dsh = dscores.to_host();
  EXPECT_TRUE(all_near(dsh, s.grad().to_double_vector(), 1e-5, 1e-5)) << what;
  // With one kept expert the gate is the constant scale: its score grad is exactly 0, as on the
  // host (the kernel divides by z in the host's order; dg / z - dg s / z^2 left ulps of dg / z).
  int single = 0;
  for (long t = 0; renormalize && t < T; ++t) {
    int kept = 0, at = -1;
    for (int j = 0; j < k; ++j)
      if (ids[size_t(t * k + j)] < E) ++kept, at = ids[size_t(t * k + j)];
    if (kept != 1) continue;
    ++single;
    EXPECT_EQ(dsh[size_t(t * C + at)], 0.0f) << what << ": token " << t << ", its one kept expert " << at;
  }
  return single;
}

TEST(CudaGates, MatchBuildRoutingForwardAndBackward) {
  check_gates(57, 9, 9, 3, false, 1.0);  // top-k's own backward: a scatter of the value gradients
  check_gates(57, 9, 9, 3, true, 2.5);
  check_gates(61, 11, 8, 4, true, 1.0);  // 3 null experts: some tokens keep fewer than k
  check_gates(61, 11, 8, 2, false, 0.5);
  EXPECT_GT(check_gates(61, 11, 8, 2, true, 1.5), 0) << "no token kept a single real expert";
}

}  // namespace
