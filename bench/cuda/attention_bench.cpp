// Flash attention (causal, bf16, tensor cores) forward and backward at S = 1024: tokens/s and
// TFLOP/s, counting only the causal half of the products.
#include <benchmark/benchmark.h>

#include "bench/cuda/bench_util.h"
#include "core/cuda/attention.h"

namespace moe::bench {
namespace {

// Args: head dim Dh; batch 8, S = 1024, heads = 1024 / Dh (model width 1024), layout [B, H, S, Dh].
void BM_FlashAttentionBf16(benchmark::State& state) {
  const int dh = int(state.range(0));
  const long B = 8, S = 1024, H = 1024 / dh;
  const size_t n = size_t(B) * H * S * dh;
  auto q = random_bf16(n, 1.0f, 21), k = random_bf16(n, 1.0f, 22), v = random_bf16(n, 1.0f, 23);
  auto dout = random_bf16(n, 1.0f, 24);
  cuda::DeviceBuffer<bf16> out(n), dq(n), dk(n), dv(n);
  cuda::DeviceBuffer<float> lse(size_t(B) * H * S);
  auto fwd = [&] { cuda::flash_attention_forward<bf16>(q.get(), k.get(), v.get(), out.get(), lse.get(), B, H, S, dh); };
  auto bwd = [&] {
    cuda::flash_attention_backward<bf16>(q.get(), k.get(), v.get(), out.get(), lse.get(), dout.get(), dq.get(),
                                         dk.get(), dv.get(), B, H, S, dh);
  };
  const double fwd_ms = time_ms(fwd, 10, 7);
  const double bwd_ms = time_ms(bwd, 10, 7);
  for (auto _ : state) {
    double t = time_ms([&] { fwd(); bwd(); }, 5, 1, 0);
    state.SetIterationTime(t * 1e-3);
  }
  const double tokens = double(B) * S, causal = double(B) * H * S * S * dh;  // S^2 / 2 pairs, x2 flops
  state.counters["fwd_ms"] = fwd_ms;
  state.counters["bwd_ms"] = bwd_ms;
  state.counters["fwd_tokens/s"] = tokens / (fwd_ms * 1e-3);
  state.counters["fwd+bwd_tokens/s"] = tokens / ((fwd_ms + bwd_ms) * 1e-3);
  state.counters["fwd_TFLOP/s"] = 2.0 * causal / (fwd_ms * 1e9);  // QK^T and PV
  state.counters["bwd_TFLOP/s"] = 5.0 * causal / (bwd_ms * 1e9);  // S again, dV, dP, dQ, dK
}
BENCHMARK(guarded<BM_FlashAttentionBf16>)->Name("BM_FlashAttentionBf16")->Arg(64)->Arg(128)->ArgName("Dh")->UseManualTime()->Unit(benchmark::kMillisecond)
    ->Iterations(10);

}  // namespace
}  // namespace moe::bench
