// The routing kernels of one MoE layer (router scores + top-k + gates, BIP dual iterations,
// Sinkhorn) against the layer's expert FFN (SwiGLU grouped GEMMs): their time share of the forward
// (`share`) and of a training step's forward + backward (`share_train`).
#include <benchmark/benchmark.h>

#include <cmath>

#include "bench/cuda/bench_util.h"
#include "core/cuda/cublas_gemm.h"
#include "core/cuda/dual_prices.h"
#include "core/cuda/gates.h"
#include "core/cuda/grouped_gemm.h"
#include "core/cuda/router.h"
#include "core/cuda/sinkhorn.h"
#include "core/cuda/softmax.h"

namespace moe::bench {
namespace {

enum Routing { kTopk = 0, kBip = 1, kSinkhorn = 2 };

// One event-timed batch of 20 calls per benchmark iteration (its manual time), after `warmup`
// calls each; returns the median batch's milliseconds per call.
double median_batch_ms(benchmark::State& state, const std::function<void()>& call, int warmup) {
  std::vector<double> ms;
  for (auto _ : state) {
    const double t = time_ms(call, 20, 1, warmup);
    ms.push_back(t);
    state.SetIterationTime(t * 1e-3);
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// Args: T tokens, D model width, E experts, k, H expert hidden, routing variant. Every variant
// starts from x [T, D] (bf16): logits = x Wr^T (cuBLAS, fp32 out), then
//   topk:     softmax -> router_topk -> gates_forward (renormalized);
//   bip:      softmax -> 4 dual iterations (cap = k T / E, clipped) -> price_shifted_topk -> gates;
//   sinkhorn: softmax, sinkhorn_topk (xi = 1, <= 100 iterations, tol 1e-4; S-BASE: the top-k of
//             the plan, fused into the last iteration kernel) -> gates from the softmax; the counter
//             sinkhorn_iters = iterations run (the convergence rule is the CPU's, so the same
//             logits converge after as many).
// The FFN: experts_forward over T k rows in E balanced groups (three grouped GEMMs + SwiGLU).
void BM_RoutingShare(benchmark::State& state) {
  const long T = state.range(0), D = state.range(1);
  const int E = int(state.range(2)), k = int(state.range(3));
  const long H = state.range(4);
  const int variant = int(state.range(5));
  const long rows = T * k;
  auto x = random_bf16(size_t(T) * D, 1.0f, 11);
  auto wr = random_bf16(size_t(E) * D, 1.0f / std::sqrt(float(D)), 12);
  cuda::DeviceBuffer<float> logits(size_t(T) * E), probs(size_t(T) * E);
  cuda::DeviceBuffer<float> values(size_t(T) * k), gates(size_t(T) * k), q(E);
  cuda::DeviceBuffer<int32_t> ids(size_t(T) * k);
  q.zero();
  auto& h = cuda::default_blas_handle();
  const long cap = (long(k) * T + E - 1) / E;
  int sinkhorn_iters = 0;
  std::function<void()> router_gemm = [&] {
    cuda::gemm<bf16, float>(h, false, true, T, E, D, 1.0f, x.get(), D, wr.get(), D, 0.0f, logits.get(), E);
  };
  std::function<void()> route = [&] {
    router_gemm();
    if (variant == kSinkhorn) {
      // The softmax first: it does not depend on the plan, so the GPU runs it while the host
      // queues the iterations (sinkhorn_topk waits for the device once, to read the state).
      cuda::softmax_forward<float>(logits.get(), probs.get(), T, E);
      sinkhorn_iters = cuda::sinkhorn_topk(logits.get(), T, E, 1.0f, 100, 1e-4f, k, values.get(), ids.get());
    } else {
      cuda::softmax_forward<float>(logits.get(), probs.get(), T, E);
      if (variant == kBip) {
        cuda::dual_price_iterations(probs.get(), T, E, k, cap, 4, true, q.get());
        cuda::price_shifted_topk(probs.get(), q.get(), T, E, k, values.get(), ids.get());
      } else {
        cuda::router_topk(probs.get(), values.get(), ids.get(), T, E, k);
      }
    }
    cuda::gates_forward(probs.get(), ids.get(), T, E, k, E, true, 1.0f, gates.get());
  };

  // The expert FFN forward: SwiGLU weights and T k rows in balanced groups.
  auto xr = random_bf16(size_t(rows) * D, 1.0f, 13);
  auto w1 = random_bf16(size_t(E) * H * D, 1.0f / std::sqrt(float(D)), 14);
  auto w3 = random_bf16(size_t(E) * H * D, 1.0f / std::sqrt(float(D)), 15);
  auto w2 = random_bf16(size_t(E) * D * H, 1.0f / std::sqrt(float(H)), 16);
  cuda::DeviceBuffer<int32_t> off(group_offsets(rows, E, false));
  cuda::DeviceBuffer<bf16> h1(size_t(rows) * H), h3(size_t(rows) * H), hh(size_t(rows) * H), y(size_t(rows) * D);
  std::function<void()> ffn = [&] {
    cuda::experts_forward(xr.get(), w1.get(), w3.get(), w2.get(), off.get(), E, rows, D, H, h1.get(), h3.get(),
                          hh.get(), y.get());
  };
  const double ffn_ms = time_ms(ffn, 20, 7);
  // The FFN's backward (dx and the three weight grads): what a training step adds to the layer's
  // time, so the share of a training step's MoE layer is also reported. Routing's own backward
  // (router GEMM grads, softmax) is left out of both sides.
  cuda::DeviceBuffer<bf16> dx(size_t(rows) * D);  // the forward's y serves as the upstream gradient
  cuda::DeviceBuffer<float> dw1(size_t(E) * H * D), dw3(size_t(E) * H * D), dw2(size_t(E) * D * H);
  std::function<void()> ffn_backward = [&] {
    cuda::experts_backward(xr.get(), w1.get(), w3.get(), w2.get(), off.get(), E, rows, D, H, h1.get(), h3.get(),
                           hh.get(), y.get(), dx.get(), dw1.get(), dw3.get(), dw2.get());
  };
  const double ffn_bwd_ms = time_ms(ffn_backward, 10, 3);

  for (int i = 0; i < 3; ++i) route();
  const double route_ms = median_batch_ms(state, route, 0);
  state.counters["routing_ms"] = route_ms;
  // The router GEMM's part of routing_ms (the same for every variant): what the balancing kernels
  // after it add is routing_ms - router_gemm_ms.
  state.counters["router_gemm_ms"] = time_ms(router_gemm, 20, 7);
  state.counters["ffn_fwd_ms"] = ffn_ms;
  state.counters["ffn_bwd_ms"] = ffn_bwd_ms;
  state.counters["share"] = route_ms / (route_ms + ffn_ms);  // of routing + FFN forward; target < 0.05
  state.counters["share_train"] = route_ms / (route_ms + ffn_ms + ffn_bwd_ms);  // of a training step's layer
  state.counters["ffn_TFLOP/s"] = 6.0 * rows * D * H / (ffn_ms * 1e9);
  if (variant == kSinkhorn) state.counters["sinkhorn_iters"] = sinkhorn_iters;
}
void routing_args(benchmark::internal::Benchmark* b) {
  for (int variant : {kTopk, kBip, kSinkhorn}) {
    b->Args({2048, 128, 16, 2, 128, variant});      // the balance model: batch 16 x seq 128, recipes/balance
    b->Args({16384, 1024, 64, 2, 2048, variant});  // a bigger layer
  }
  b->ArgNames({"T", "D", "E", "k", "H", "routing"});
}
BENCHMARK(guarded<BM_RoutingShare>)->Name("BM_RoutingShare")->Apply(routing_args)->UseManualTime()->Unit(benchmark::kMillisecond)->Iterations(10);

// sinkhorn_plan alone on router-like logits (N(0, 1)), xi = 1: Args T, E, iterations (tol 0, so
// exactly that many run: the per-iteration cost, one kernel each, plus the last kernel that folds
// and writes the plan, with one host read of the state per batch: 3 launches, then 4, 8).
// us_per_iter = the whole call / iterations.
void BM_SinkhornPlan(benchmark::State& state) {
  const long T = state.range(0);
  const int E = int(state.range(1)), iters = int(state.range(2));
  auto logits = random_f32(size_t(T) * E, 1.0f, 21);
  cuda::DeviceBuffer<float> plan(size_t(T) * E);
  int ran = 0;
  std::function<void()> call = [&] { ran = cuda::sinkhorn_plan(logits.get(), T, E, 1.0f, iters, 0.0f, plan.get()); };
  const double call_ms = median_batch_ms(state, call, 1);
  state.counters["sinkhorn_ms"] = call_ms;
  state.counters["us_per_iter"] = call_ms * 1e3 / ran;
  state.counters["sinkhorn_iters"] = ran;
}
void sinkhorn_args(benchmark::internal::Benchmark* b) {
  for (int iters : {2, 16}) {
    b->Args({2048, 16, iters});
    b->Args({16384, 64, iters});
  }
  b->ArgNames({"T", "E", "iters"});
}
BENCHMARK(guarded<BM_SinkhornPlan>)->Name("BM_SinkhornPlan")->Apply(sinkhorn_args)->UseManualTime()->Unit(benchmark::kMillisecond)->Iterations(10);

// dual_price_iterations alone (BIP: clipped, k = 2, cap = ceil(k T / E)) on router-like
// probabilities (softmax of variance-1 logits), q warm-started call to call as in training: Args
// T, E, iterations. us_per_iter = the whole call (2 kernels per iteration; the first token pass
// also transposes) / iterations; shifted_topk_us = price_shifted_topk after it (one kernel).
void BM_DualPrices(benchmark::State& state) {
  const long T = state.range(0);
  const int E = int(state.range(1)), iters = int(state.range(2)), k = 2;
  auto logits = random_f32(size_t(T) * E, 1.7f, 22);  // uniform +/-1.7: variance 1
  cuda::DeviceBuffer<float> probs(size_t(T) * E), q(E), values(size_t(T) * k);
  cuda::DeviceBuffer<int32_t> ids(size_t(T) * k);
  cuda::softmax_forward<float>(logits.get(), probs.get(), T, E);
  const long cap = (long(k) * T + E - 1) / E;
  q.zero();
  std::function<void()> call = [&] { cuda::dual_price_iterations(probs.get(), T, E, k, cap, iters, true, q.get()); };
  const double call_ms = median_batch_ms(state, call, 1);
  state.counters["dual_ms"] = call_ms;
  state.counters["us_per_iter"] = call_ms * 1e3 / iters;
  std::function<void()> topk = [&] {
    cuda::price_shifted_topk(probs.get(), q.get(), T, E, k, values.get(), ids.get());
  };
  state.counters["shifted_topk_us"] = time_ms(topk, 20, 5) * 1e3;
}
void dual_prices_args(benchmark::internal::Benchmark* b) {
  for (int iters : {1, 4, 16}) {
    b->Args({2048, 16, iters});
    b->Args({16384, 64, iters});
  }
  b->ArgNames({"T", "E", "iters"});
}
BENCHMARK(guarded<BM_DualPrices>)->Name("BM_DualPrices")->Apply(dual_prices_args)->UseManualTime()->Unit(benchmark::kMillisecond)->Iterations(10);

}  // namespace
}  // namespace moe::bench
