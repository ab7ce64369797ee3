// The kernel emulation's own costs (core/cuda/emulation.cpp), which set how long the emulated
// kernel tests take on a CI machine: a launch, a __syncthreads phase, a warp shuffle. Each is
// measured against a reference in the same run: the scheme the runtime used until session 11,
// one std::jthread per GPU thread started by every launch and std::barrier for __syncthreads and
// the warp rendezvous. The reference is that mechanism alone (no shared memory, slots or checks),
// so it flatters the old runtime slightly. Results: docs/benchmarks.md ("Kernel emulation").
//   build/bench/moetrain_emulation_bench [--benchmark_filter=...]
#include <benchmark/benchmark.h>

#include <barrier>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "core/cuda/launch.h"
#include "core/cuda/memory.h"

using namespace moe;
using namespace moe::cuda;

namespace {

__global__ void empty_kernel(int* out) {
  if (threadIdx.x == 0) out[0] = 1;
}

// `phases` __syncthreads, each after a shared-memory write (what a tiled kernel's loop does).
__global__ void barriers_kernel(int phases, int* out) {
  MOE_SHARED(int, s, [1024]);
  for (int p = 0; p < phases; ++p) {
    s[threadIdx.x] = p;
    __syncthreads();
  }
  if (threadIdx.x == 0) out[0] = s[blockDim.x - 1];
}

// `rounds` warp all-reduces of 5 xor shuffles each (a softmax row or a norm's reduction).
__global__ void shuffles_kernel(int rounds, float* out) {
  float v = float(threadIdx.x);
  for (int r = 0; r < rounds; ++r)
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  out[threadIdx.x] = v;
}

// The reference: `threads` host threads started for the launch, each waiting `waits` times at a
// std::barrier shared by `group` threads (the block for __syncthreads, a warp for a shuffle).
void reference_launch(int threads, int group, int waits) {
  std::vector<std::unique_ptr<std::barrier<>>> barriers;
  for (int g = 0; g < threads / group; ++g) barriers.push_back(std::make_unique<std::barrier<>>(group));
  std::vector<std::jthread> pool;
  pool.reserve(size_t(threads));
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&barriers, t, group, waits] {
      for (int w = 0; w < waits; ++w) barriers[size_t(t / group)]->arrive_and_wait();
    });
}

void BM_EmulatedLaunch(benchmark::State& state) {
  const int threads = int(state.range(0));
  DeviceBuffer<int> out(1);
  for (auto _ : state) MOE_LAUNCH(empty_kernel, 1, threads, 0, nullptr, out.get());
  state.SetLabel("empty kernel, 1 block");
}
void BM_ReferenceLaunch(benchmark::State& state) {
  const int threads = int(state.range(0));
  for (auto _ : state) reference_launch(threads, threads, 0);
  state.SetLabel("threads started and joined per launch");
}

constexpr int kPhases = 64;
void BM_EmulatedSyncthreads(benchmark::State& state) {
  const int threads = int(state.range(0));
  DeviceBuffer<int> out(1);
  for (auto _ : state) MOE_LAUNCH(barriers_kernel, 1, threads, 0, nullptr, kPhases, out.get());
  state.SetItemsProcessed(state.iterations() * kPhases);  // items: barrier phases
  state.SetLabel("64 phases, 1 block");
}
void BM_ReferenceSyncthreads(benchmark::State& state) {
  const int threads = int(state.range(0));
  for (auto _ : state) reference_launch(threads, threads, kPhases);
  state.SetItemsProcessed(state.iterations() * kPhases);  // items: barrier phases
  state.SetLabel("64 std::barrier phases, threads started per launch");
}

constexpr int kRounds = 8;
void BM_EmulatedShuffles(benchmark::State& state) {
  const int threads = int(state.range(0));
  DeviceBuffer<float> out{size_t(threads)};
  for (auto _ : state) MOE_LAUNCH(shuffles_kernel, 1, threads, 0, nullptr, kRounds, out.get());
  state.SetLabel("8 x 5 shuffles per thread, 1 block");
}
void BM_ReferenceShuffles(benchmark::State& state) {
  const int threads = int(state.range(0));
  for (auto _ : state) reference_launch(threads, 32, kRounds * 5);
  state.SetLabel("40 std::barrier waits per warp, threads started per launch");
}

BENCHMARK(BM_EmulatedLaunch)->Arg(32)->Arg(256)->Arg(1024)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_ReferenceLaunch)->Arg(32)->Arg(256)->Arg(1024)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_EmulatedSyncthreads)->Arg(64)->Arg(256)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_ReferenceSyncthreads)->Arg(64)->Arg(256)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_EmulatedShuffles)->Arg(64)->Arg(256)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_ReferenceShuffles)->Arg(64)->Arg(256)->Unit(benchmark::kMicrosecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
