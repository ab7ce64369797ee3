// Dense cuBLAS bf16 GEMM (the measured peak MFU is computed against) and the tensor-core grouped
// expert GEMM against one dense cuBLAS GEMM of the same FLOPs, timed in the same run (and checked
// against cuBLAS on expert 0's group: expert0_rel_err). Every form runs on each grouped kernel,
// kernel = 0 the mma kernel (grouped_gemm.cu), 1 and 2 the wgmma kernels (grouped_gemm_sm90.cu;
// 1: 5 stages, 1 block per SM; 2: 3 stages, 2 blocks per SM), 3 the persistent 128 x 256 wgmma
// kernel (grouped_gemm_sm90_persistent.cu), 4 and 5 the TMA-fed warp-specialized ones
// (grouped_gemm_sm90_tma.cu; 5: pingpong); 1 - 5 on sm_90 devices only: elsewhere those rows
// report an error. Beside the ratio, a write-bandwidth roofline measured in the same run: the
// grouped output's bytes (out_bytes; tn writes E x M x K fp32, 64x the dense tn's output at E 64)
// written by cudaMemsetAsync (write_GBps), and bound_ratio, the best ratio any kernel could reach
// that writes those bytes at that rate (dense ms / max(dense ms, write ms)); and the memory's rate
// for the form's whole least traffic, its inputs read once while the output is written
// (in_bytes; traffic_probe.h: mixed_GBps), with mixed_bound_ratio the best ratio at that rate.
#include <benchmark/benchmark.h>

#include <cmath>
#include <type_traits>

#include "bench/cuda/bench_util.h"
#include "bench/cuda/traffic_probe.h"
#include "core/cuda/cublas_gemm.h"
#include "core/cuda/grouped_gemm.h"
#include "core/cuda/grouped_gemm_sm90.h"
#include "core/cuda/memory.h"
#include "core/error.h"

namespace moe::bench {
namespace {

// Times fn in the benchmark loop (one event-timed batch of reps calls per iteration) and returns
// the median milliseconds per call.
double timed_loop(benchmark::State& state, const std::function<void()>& fn, int reps) {
  std::vector<double> ms;
  for (int i = 0; i < 3; ++i) fn();
  for (auto _ : state) {
    double t = time_ms(fn, reps, 1, 0);
    ms.push_back(t);
    state.SetIterationTime(t * 1e-3);
  }
  std::sort(ms.begin(), ms.end());
  return ms.empty() ? 0.0 : ms[ms.size() / 2];
}

// C [n, n] = A [n, n] B^T, bf16 operands and output, fp32 accumulation (cublasGemmEx).
void BM_CublasBf16Gemm(benchmark::State& state) {
  const long n = state.range(0);
  auto a = random_bf16(n * n, 1.0f, 1), b = random_bf16(n * n, 1.0f, 2);
  cuda::DeviceBuffer<bf16> c(n * n);
  auto& h = cuda::default_blas_handle();
  double ms = timed_loop(state, [&] { cuda::gemm<bf16, bf16>(h, false, true, n, n, n, 1.0f, a.get(), n, b.get(), n,
                                                              0.0f, c.get(), n); }, n >= 8192 ? 5 : 20);
  state.counters["ms"] = ms;
  state.counters["TFLOP/s"] = 2.0 * n * n * n / (ms * 1e9);
}
BENCHMARK(guarded<BM_CublasBf16Gemm>)->Name("BM_CublasBf16Gemm")->Arg(4096)->Arg(8192)->UseManualTime()->Unit(benchmark::kMillisecond)->Iterations(20);

enum Form { kNt = 0, kNn = 1, kTn = 2 };

// max |got - want| / max |want| over n elements of two device arrays (float or bf16).
template <class T>
double max_rel_diff(const T* got, const T* want, size_t n) {
  std::vector<T> g(n), w(n);
  cuda::copy_to_host(g.data(), got, n * sizeof(T));
  cuda::copy_to_host(w.data(), want, n * sizeof(T));
  auto f = [](T v) {
    if constexpr (std::is_same_v<T, bf16>)
      return double(bf16_to_float(v));
    else
      return double(v);
  };
  double diff = 0, scale = 0;
  for (size_t i = 0; i < n; ++i) {
    diff = std::max(diff, std::abs(f(g[i]) - f(w[i])));
    scale = std::max(scale, std::abs(f(w[i])));
  }
  return scale > 0 ? diff / scale : diff;
}

// The grouped result for expert 0 (rows off[0] .. off[1]) against cuBLAS on that group alone:
// a full-size check of the kernel (bf16 out for nt / nn: ~4e-3 expected; fp32 out for tn: ~1e-5).
double expert0_error(int form, long rows0, long M, long K, const bf16* x, const bf16* w, const bf16* dy,
                     const bf16* out_bf16, const float* out_f32) {
  auto& h = cuda::default_blas_handle();
  if (rows0 == 0) return 0.0;
  if (form == kTn) {
    cuda::DeviceBuffer<float> ref(size_t(M) * K);
    cuda::gemm<bf16, float>(h, true, false, M, K, rows0, 1.0f, dy, M, x, K, 0.0f, ref.get(), K);
    return max_rel_diff(out_f32, static_cast<const float*>(ref.get()), size_t(M) * K);
  }
  const long n_out = form == kNt ? M : K;
  cuda::DeviceBuffer<bf16> ref(size_t(rows0) * n_out);
  if (form == kNt)
    cuda::gemm<bf16, bf16>(h, false, true, rows0, M, K, 1.0f, x, K, w, K, 0.0f, ref.get(), M);
  else
    cuda::gemm<bf16, bf16>(h, false, false, rows0, K, M, 1.0f, dy, M, w, K, 0.0f, ref.get(), K);
  return max_rel_diff(out_bf16, static_cast<const bf16*>(ref.get()), size_t(rows0) * n_out);
}

// Grouped GEMM over E experts of rows R total (balanced or Zipf-skewed groups), weights [E, M, K],
// in one form; the reference is one cuBLAS GEMM of the same shape (R x M x K, same FLOPs).
// Args: experts, skewed (0/1), form (0 nt forward, 1 nn input grad, 2 tn weight grad), R, M, K,
// kernel (0 mma, 1 wgmma, 2 wgmma2, 3 wgmma3, 4 wgmma4, 5 wgmma5: MOE_GROUPED_GEMM's choices).
void BM_GroupedGemmVsCublas(benchmark::State& state) {
  const int experts = int(state.range(0));
  const bool skewed = state.range(1) != 0;
  const int form = int(state.range(2));
  const long rows = state.range(3), M = state.range(4), K = state.range(5);
  const int kernel = int(state.range(6));
  static const char* const kKernels[] = {"mma", "wgmma", "wgmma2", "wgmma3", "wgmma4", "wgmma5"};
  MOE_CHECK(kernel >= 0 && kernel <= 5, "BM_GroupedGemmVsCublas", "kernel ", kernel, ": expected 0 .. 5");
  const cuda::GroupedGemmKernelScope choice(kKernels[kernel]);
  cuda::grouped_gemm_kernel();  // off sm_90 the wgmma choices throw: the row reports why
  auto off_host = group_offsets(rows, experts, skewed);
  cuda::DeviceBuffer<int32_t> off(off_host);
  auto w = random_bf16(size_t(experts) * M * K, 0.05f, 3);
  auto x = random_bf16(size_t(rows) * K, 1.0f, 4);   // nt / tn input
  auto dy = random_bf16(size_t(rows) * M, 1.0f, 5);  // nn / tn upstream gradient
  cuda::DeviceBuffer<bf16> out_bf16(size_t(rows) * std::max(M, K));
  cuda::DeviceBuffer<float> out_f32(size_t(experts) * M * K);
  auto& h = cuda::default_blas_handle();
  std::function<void()> grouped, dense;
  if (form == kNt) {
    grouped = [&] { cuda::grouped_gemm_nt<bf16>(x.get(), w.get(), off.get(), experts, rows, M, K, out_bf16.get()); };
    dense = [&] { cuda::gemm<bf16, bf16>(h, false, true, rows, M, K, 1.0f, x.get(), K, w.get(), K, 0.0f,
                                         out_bf16.get(), M); };
  } else if (form == kNn) {
    grouped = [&] { cuda::grouped_gemm_nn<bf16>(dy.get(), w.get(), off.get(), experts, rows, M, K, out_bf16.get()); };
    dense = [&] { cuda::gemm<bf16, bf16>(h, false, false, rows, K, M, 1.0f, dy.get(), M, w.get(), K, 0.0f,
                                         out_bf16.get(), K); };
  } else {
    grouped = [&] { cuda::grouped_gemm_tn<float>(dy.get(), x.get(), off.get(), experts, rows, M, K, out_f32.get()); };
    dense = [&] { cuda::gemm<bf16, float>(h, true, false, M, K, rows, 1.0f, dy.get(), M, x.get(), K, 0.0f,
                                          out_f32.get(), K); };
  }
  const double flops = 2.0 * rows * M * K;
  const double dense_ms = time_ms(dense, 10, 7);
  const double grouped_ms = timed_loop(state, grouped, 10);
  state.counters["dense_TFLOP/s"] = flops / (dense_ms * 1e9);
  state.counters["grouped_TFLOP/s"] = flops / (grouped_ms * 1e9);
  state.counters["ratio"] = dense_ms / grouped_ms;  // grouped rate / dense rate; target >= 0.70
  // The write roofline: the grouped output's bytes written by the driver's memset (a nonzero byte,
  // in case a zero fill had a shortcut), the same buffer the grouped GEMM writes. What no kernel
  // writing those bytes beats, reads and products aside.
  const size_t out_bytes = form == kTn ? size_t(experts) * M * K * sizeof(float)
                                       : size_t(rows) * (form == kNt ? M : K) * sizeof(bf16);
  void* out = form == kTn ? static_cast<void*>(out_f32.get()) : static_cast<void*>(out_bf16.get());
  const double write_ms = time_ms([&] { cuda::device_memset_async(out, 0x3C, out_bytes, nullptr); }, 10, 7);
  state.counters["out_bytes"] = double(out_bytes);
  state.counters["write_GBps"] = double(out_bytes) / (write_ms * 1e6);
  state.counters["bound_ratio"] = dense_ms / std::max(dense_ms, write_ms);
  // The least bytes read: each input once (nt: x and w, nn: dy and w, tn: dy and x).
  const size_t in_bytes = sizeof(bf16) * (form == kNt   ? size_t(rows) * K + size_t(experts) * M * K
                                          : form == kNn ? size_t(rows) * M + size_t(experts) * M * K
                                                        : size_t(rows) * (M + K));
  cuda::DeviceBuffer<unsigned char> in_scratch(in_bytes);
  cuda::device_memset_async(in_scratch.get(), 0x21, in_bytes, nullptr);
  const double mixed_ms = time_ms([&] { mixed_traffic(in_scratch.get(), in_bytes, out, out_bytes); }, 10, 7);
  state.counters["in_bytes"] = double(in_bytes);
  state.counters["mixed_GBps"] = double(in_bytes + out_bytes) / (mixed_ms * 1e6);
  state.counters["mixed_bound_ratio"] = dense_ms / std::max(dense_ms, mixed_ms);
  state.counters["largest_group"] = off_host[1] - off_host[0];
  grouped();  // the dense reference shares the output buffers: the grouped result last
  state.counters["expert0_rel_err"] = expert0_error(form, off_host[1] - off_host[0], M, K, x.get(), w.get(), dy.get(),
                                                    out_bf16.get(), out_f32.get());
}
void grouped_args(benchmark::internal::Benchmark* b) {
  // R = T k = 16384 * 2 rows, D = 1024, H = 2048: the forward h = x w1^T is R x H x D.
  for (int form : {kNt, kNn, kTn})
    for (int experts : {16, 64})
      for (int skewed : {0, 1})
        for (int kernel : {0, 1, 2, 3, 4, 5}) b->Args({experts, skewed, form, 32768, 2048, 1024, kernel});
  b->ArgNames({"E", "skewed", "form", "R", "M", "K", "kernel"});
}
BENCHMARK(guarded<BM_GroupedGemmVsCublas>)->Name("BM_GroupedGemmVsCublas")->Apply(grouped_args)->UseManualTime()->Unit(benchmark::kMillisecond)->Iterations(10);

}  // namespace
}  // namespace moe::bench
