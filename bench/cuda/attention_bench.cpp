// Flash attention (causal, bf16, tensor cores) forward and backward at S = 1024: tokens/s and
// TFLOP/s, counting only the causal half of the products; the synchronous tiles against the
// cp.async double buffers (MOE_FLASH_ASYNC=0 / 1) in the same run, and both against an unfused cuBLAS
// reference forward (attention_reference.h, PyTorch's "math" SDPA) on the same inputs.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "bench/cuda/attention_reference.h"
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

// Largest |a_i - b_i| (bf16 values as floats); NaN as soon as one difference is NaN, which a plain
// running max would skip.
double max_abs_diff(const std::vector<bf16>& a, const std::vector<bf16>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = std::fabs(double(bf16_to_float(a[i])) - double(bf16_to_float(b[i])));
    if (std::isnan(d)) return d;
    m = std::max(m, d);
  }
  return m;
}

// The reference forward of the same shape (CausalAttentionReference), timed as the flash forward
// (time_ms(fn, 10, 7)), its output compared with the flash forward's `out`. Counters: ref_fwd_ms,
// ref_fwd_TFLOP/s (the causal FLOPs the flash counter counts, although cuBLAS computes all S^2
// scores: the effective rate, comparable to fwd_TFLOP/s), fwd_speedup_vs_ref (ref_fwd_ms / fwd_ms),
// ref_max_abs_diff (max |flash - reference| over all outputs: both round P to bf16 and the output
// to bf16, so ~1e-2 at most is expected (3.9e-3 at S = 37..130 with this reference's code run under
// the emulation, a CPU stand-in for cuBLAS); much more, or NaN, means one of them is wrong).
void reference_counters(benchmark::State& state, const cuda::DeviceBuffer<bf16>& q, const cuda::DeviceBuffer<bf16>& k,
                        const cuda::DeviceBuffer<bf16>& v, const cuda::DeviceBuffer<bf16>& out, long B, long H, long S,
                        int dh, double fwd_ms, double causal_flops) {
  // The reference holds [B * H, S, S] fp32 scores and mask and bf16 P: 1.25 GiB at B 8, S 1024,
  // Dh 64 (B * H = 128), but S^2 growth makes S = 8192 need 80 GiB. A shape needing more than half
  // the free device memory runs without it, counter ref_skipped_GiB saying how much it needed.
  const size_t need = CausalAttentionReference::workspace_bytes(B, H, S);
  size_t free_bytes = 0, total_bytes = 0;
  cuda_check(cudaMemGetInfo(&free_bytes, &total_bytes), "cudaMemGetInfo");
  if (need > free_bytes / 2) {
    state.counters["ref_skipped_GiB"] = double(need) / double(size_t(1) << 30);
    return;
  }
  CausalAttentionReference ref(B, H, S, dh);
  cuda::DeviceBuffer<bf16> ref_out(out.size());
  const double ref_ms = time_ms([&] { ref.forward(q.get(), k.get(), v.get(), ref_out.get()); }, 10, 7);
  state.counters["ref_fwd_ms"] = ref_ms;
  state.counters["ref_fwd_TFLOP/s"] = 2.0 * causal_flops / (ref_ms * 1e9);
  state.counters["fwd_speedup_vs_ref"] = ref_ms / fwd_ms;
  state.counters["ref_max_abs_diff"] = max_abs_diff(out.to_host(), ref_out.to_host());
}

// Args: head dim Dh; async (0: MOE_FLASH_ASYNC=0, synchronous tile loads; 1: MOE_FLASH_ASYNC=1, the
// default from sm_90); batch 8, S = 1024, heads = 1024 / Dh (model width 1024), layout [B, H, S, Dh].
// With async, counter differing_vs_sync: elements of out, lse, dq, dk, dv whose bits differ from the
// synchronous path's on the same inputs (expected 0: the same arithmetic in the same order). Both
// rows also time the cuBLAS reference forward (reference_counters).
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
  fwd();  // out: this row's forward (the timed loop ran the backward after it, which leaves out alone)
  reference_counters(state, q, k, v, out, B, H, S, dh, fwd_ms, causal);
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
