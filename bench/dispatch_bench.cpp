// The host side of an MoE layer's dispatch at the GPU benchmark's shape (T = 16384 tokens, top-2,
// E = 16 / 64): the counting-sort dispatch plan (make_dispatch_plan) and the per-expert load count,
// both on the host in every run, the device one included (layers/moe/moe_layer.cpp: the GPU waits
// while the host builds them, so their time is routing_time_share there). Reference, in the same
// run: one counting pass over the same expert ids, the floor of any O(A) plan.
//
// The process's malloc settings matter here (core/allocator.h tune_host_malloc, which moetrain
// applies at start and this binary too): MOE_HOST_MALLOC=default measures glibc's defaults.
#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdint>
#include <random>
#include <vector>

#include "core/allocator.h"
#include "layers/moe/dispatch.h"
#include "layers/moe/routing_stats.h"

using namespace moe;

namespace {

const bool kTuned = [] {
  tune_host_malloc();
  return true;
}();

constexpr int64_t kTokens = 16384, kTopK = 2;

// Token-major top-2 assignments with uniformly drawn experts (i32, as the device routing returns them).
struct Assignments {
  Tensor token, expert;
  std::vector<int64_t> kept;
};
Assignments draw(int64_t E) {
  const int64_t A = kTokens * kTopK;
  std::mt19937 g(7);
  std::vector<int32_t> tok(static_cast<size_t>(A)), ex(static_cast<size_t>(A));
  for (int64_t a = 0; a < A; ++a) {
    tok[size_t(a)] = int32_t(a / kTopK);
    ex[size_t(a)] = int32_t(g() % uint32_t(E));
  }
  Assignments s{Tensor::from_vector(tok, {A}), Tensor::from_vector(ex, {A}), std::vector<int64_t>(size_t(A))};
  for (int64_t a = 0; a < A; ++a) s.kept[size_t(a)] = a;
  return s;
}

double micros(std::chrono::steady_clock::duration d) { return std::chrono::duration<double, std::micro>(d).count(); }

void BM_DispatchPlan(benchmark::State& state) {
  const int64_t E = state.range(0), A = kTokens * kTopK;
  const Assignments s = draw(E);
  double plan_us = 0, load_us = 0, floor_us = 0;
  for (auto _ : state) {
    auto t0 = std::chrono::steady_clock::now();
    DispatchPlanPtr plan = make_dispatch_plan(s.token, s.expert, s.kept, kTokens, E);
    auto t1 = std::chrono::steady_clock::now();
    std::vector<double> load = expert_loads(s.expert, E, "BM_DispatchPlan");
    auto t2 = std::chrono::steady_clock::now();
    std::vector<int64_t> count(size_t(E), 0);  // the reference: one counting pass over the ids
    const int32_t* ex = s.expert.data<int32_t>();
    for (int64_t a = 0; a < A; ++a) ++count[size_t(ex[a])];
    auto t3 = std::chrono::steady_clock::now();
    benchmark::DoNotOptimize(plan->token_slots.data());
    benchmark::DoNotOptimize(load.data());
    benchmark::DoNotOptimize(count.data());
    plan_us += micros(t1 - t0);
    load_us += micros(t2 - t1);
    floor_us += micros(t3 - t2);
  }
  const double n = double(state.iterations());
  state.counters["plan_us"] = plan_us / n;
  state.counters["load_us"] = load_us / n;
  state.counters["count_pass_us"] = floor_us / n;
  state.counters["plan_vs_count_pass"] = plan_us / floor_us;
}
BENCHMARK(BM_DispatchPlan)->Arg(16)->Arg(64)->ArgName("E")->Unit(benchmark::kMicrosecond)->UseRealTime();

}  // namespace
