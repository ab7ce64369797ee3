// Flash attention (causal, bf16, tensor cores) forward and backward at S = 1024: tokens/s and
// TFLOP/s, counting only the causal half of the products; the synchronous tiles against
// MOE_FLASH_ASYNC=1's cp.async double buffers in the same run.
#include <benchmark/benchmark.h>

#include <cstring>

#include "bench/cuda/bench_util.h"
#include "core/cuda/attention.h"
#include "tests/env_scope.h"

namespace moe::bench {
namespace {

// Elements of a and b whose bits differ.
template <class T>
long differing(const std::vector<T>& a, const std::vector<T>& b) {
  long n = 0;
  for (size_t i = 0; i < a.size(); ++i) n += std::memcmp(&a[i], &b[i], sizeof(T)) != 0;
  return n;
}

// Args: head dim Dh; async (0: synchronous tile loads, the default; 1: MOE_FLASH_ASYNC=1); batch 8,
// S = 1024, heads = 1024 / Dh (model width 1024), layout [B, H, S, Dh]. With async, counter
// differing_vs_sync: elements of out, lse, dq, dk, dv whose bits differ from the synchronous path's on
// the same inputs (expected 0: the same arithmetic in the same order).
void BM_FlashAttentionBf16(benchmark::State& state) {
  const int dh = int(state.range(0));
  const bool async = state.range(1) != 0;
  const test::EnvScope tiles("MOE_FLASH_ASYNC", async ? "1" : "0");
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
  if (async) {
    fwd();
    bwd();
    const std::vector<bf16> got[4] = {out.to_host(), dq.to_host(), dk.to_host(), dv.to_host()};
    const std::vector<float> got_lse = lse.to_host();
    const test::EnvScope sync_tiles("MOE_FLASH_ASYNC", "0");
    fwd();
    bwd();
    const std::vector<bf16> want[4] = {out.to_host(), dq.to_host(), dk.to_host(), dv.to_host()};
    long diff = differing(got_lse, lse.to_host());
    for (int i = 0; i < 4; ++i) diff += differing(got[i], want[i]);
    state.counters["differing_vs_sync"] = double(diff);
  }
}
BENCHMARK(guarded<BM_FlashAttentionBf16>)
    ->Name("BM_FlashAttentionBf16")
    ->ArgsProduct({{64, 128}, {0, 1}})
    ->ArgNames({"Dh", "async"})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond)
    ->Iterations(10);

}  // namespace
}  // namespace moe::bench
