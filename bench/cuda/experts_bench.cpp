// The MoE layer's two ways of multiplying the SwiGLU experts, forward + backward, timed against
// each other in the same run as rows per expert grow: the tensor-core grouped kernel
// (grouped_gemm.h experts_forward / experts_backward: one launch per product for all experts)
// and one cuBLAS GEMM per expert and product (experts_per_expert.h, the layer's own code), on the
// grouped kernel MOE_GROUPED_GEMM selects. The layer's switch between them (use_grouped_kernel,
// moe_ops.cpp) was read from this sweep.
#include <benchmark/benchmark.h>

#include "bench/cuda/bench_util.h"
#include "core/cuda/grouped_gemm.h"
#include "core/cuda/ops/experts_per_expert.h"

namespace moe::bench {
namespace {

// Args: experts E, rows per expert (balanced groups: N = E rows in all), d_model D, hidden H.
void BM_ExpertsForwardBackward(benchmark::State& state) {
  const int E = int(state.range(0));
  const long per = state.range(1), D = state.range(2), H = state.range(3);
  const long N = per * E;
  const auto off_host = group_offsets(N, E, false);
  const std::vector<int64_t> off64(off_host.begin(), off_host.end());
  cuda::DeviceBuffer<int32_t> off(off_host);
  const size_t nd = size_t(N) * D, nh = size_t(N) * H, w = size_t(E) * H * D;
  auto x = random_bf16(nd, 1.0f, 1), dy = random_bf16(nd, 1.0f, 2);
  auto w1 = random_bf16(w, 0.05f, 3), w3 = random_bf16(w, 0.05f, 4), w2 = random_bf16(w, 0.05f, 5);
  cuda::DeviceBuffer<bf16> h1(nh), h3(nh), h(nh), y(nd), dx_bf16(nd), dh(nh), dh1(nh), dh3(nh);
  cuda::DeviceBuffer<float> dx_f32(nd), d1(w), d3(w), d2(w);

  // Each path as the layer runs it: the forward keeps h1, h3, h for the backward; the grouped
  // backward writes dx in bf16, the per-expert one in fp32 (the w1 and w3 paths summed there).
  auto grouped = [&] {
    cuda::experts_forward(x.get(), w1.get(), w3.get(), w2.get(), off.get(), E, N, D, H, h1.get(), h3.get(), h.get(),
                          y.get());
    cuda::experts_backward(x.get(), w1.get(), w3.get(), w2.get(), off.get(), E, N, D, H, h1.get(), h3.get(), h.get(),
                           dy.get(), dx_bf16.get(), d1.get(), d3.get(), d2.get());
  };
  auto per_expert = [&] {
    cuda::experts_forward_per_expert(x.get(), w1.get(), w3.get(), w2.get(), off64, D, H, h1.get(), h3.get(), h.get(),
                                     y.get());
    cuda::experts_backward_per_expert(x.get(), w1.get(), w3.get(), w2.get(), off64, D, H, h1.get(), h3.get(), h.get(),
                                      dy.get(), dx_f32.get(), d1.get(), d3.get(), d2.get(), dh.get(), dh1.get(),
                                      dh3.get());
  };
  // 3 products forward, 6 backward (dh, dw2; dx twice, dw1, dw3), each 2 N D H FLOPs.
  const double flops = 9.0 * 2.0 * double(N) * double(D) * double(H);
  const int reps = int(std::clamp(3e11 / flops, 1.0, 20.0));  // ~0.1-1 s per timed batch
  double grouped_ms = 0, per_expert_ms = 0;
  for (auto _ : state) {
    per_expert_ms = time_ms(per_expert, reps, 3, 1);
    grouped_ms = time_ms(grouped, reps, 3, 1);
    state.SetIterationTime((grouped_ms + per_expert_ms) * 1e-3);
  }
  state.counters["grouped_ms"] = grouped_ms;
  state.counters["per_expert_ms"] = per_expert_ms;
  state.counters["grouped_TFLOP/s"] = flops / (grouped_ms * 1e9);
  state.counters["per_expert_TFLOP/s"] = flops / (per_expert_ms * 1e9);
  // > 1: the grouped kernel is faster at this size; the layer's choice, 1 = grouped.
  state.counters["ratio"] = per_expert_ms / grouped_ms;
  state.counters["layer_picks_grouped"] = cuda::use_grouped_kernel(N, E, D, H) ? 1 : 0;
}
void experts_args(benchmark::internal::Benchmark* b) {
  const long rows[] = {64, 128, 256, 512, 1024, 2048, 4096};
  for (int experts : {16, 64})  // d_model 1024, hidden 2048
    for (long r : rows) b->Args({experts, r, 1024, 2048});
  for (long r : rows) b->Args({16, r, 128, 128});  // the balance model: E 16, D 128, H 128
  b->ArgNames({"E", "rows_per_expert", "D", "H"});
}
BENCHMARK(guarded<BM_ExpertsForwardBackward>)->Name("BM_ExpertsForwardBackward")->Apply(experts_args)->UseManualTime()->Unit(benchmark::kMillisecond)->Iterations(1);

}  // namespace
}  // namespace moe::bench
