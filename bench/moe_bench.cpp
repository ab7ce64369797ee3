// MoE layer benchmarks: forward+backward of the whole layer at T = 4096, D = 256, E = 16, k = 2
// per strategy, each strategy's routing (select + losses) alone, and the grouped expert GEMM
// against one dense sgemm with the same FLOPs.
#include <benchmark/benchmark.h>
#include <cblas.h>

#include <memory>

#include "core/ops.h"
#include "layers/moe/moe_layer.h"

using namespace moe;

namespace {

// scores[token[a], expert[a]] for every assignment, differentiable (index_select on the flat view).
Tensor pick_scores(const Tensor& scores, const Tensor& token, const Tensor& expert) {
  const int64_t C = scores.size(1);
  std::vector<int64_t> idx = token.to_vector<int64_t>(), ex = expert.to_vector<int64_t>();
  for (size_t a = 0; a < idx.size(); ++a) idx[a] = idx[a] * C + ex[a];
  return index_select(scores.reshape({scores.numel()}), 0, Tensor::from_vector<int64_t>(idx, {int64_t(idx.size())}));
}

constexpr int64_t kTokens = 4096, kBatch = 4, kSeq = kTokens / kBatch, kDim = 256, kExperts = 16, kTopK = 2;

// Plain top-k of the scores with renormalized gates: the routing every strategy is measured
// against (the least a token-choice router has to do). Built from the framework's ops.
class ReferenceTopK : public Balancer {
 public:
  std::string name() const override { return "reference_topk"; }
  Routing select(const RouterOutput& in, Philox&) override {
    const int64_t T = in.scores.size(0), k = in.top_k;
    TopK tk = topk(in.scores.detach(), k);
    Routing r;
    r.token = Tensor::empty({T * k}, DType::i64);
    int64_t* pt = r.token.data<int64_t>();
    for (int64_t a = 0; a < T * k; ++a) pt[a] = a / k;
    r.expert = tk.indices.reshape({T * k});
    Tensor g = pick_scores(in.scores, r.token, r.expert).reshape({T, k});
    r.gate = div(g, sum(g, {1}, true)).reshape({T * k});
    r.score = r.gate.detach();
    return r;
  }
};

const char* const kStrategies[] = {"none", "aux_loss", "loss_free",     "sinkhorn",     "ssr",
                                   "bip",  "quantile", "expert_choice", "null_experts", "top_p"};

ModelConfig bench_config(const std::string& strategy = "aux_loss") {
  ModelConfig c;
  c.d_model = kDim;  // expert hidden: the dense default 8/3 D -> 688
  c.moe.num_experts = kExperts;
  c.moe.top_k = kTopK;
  c.moe.balance.strategy = strategy;
  if (strategy == "null_experts") c.moe.balance.num_null_experts = kExperts / 4;
  return c;
}

Tensor bench_input() {
  Tensor x = Tensor::empty({kBatch, kSeq, kDim});
  Philox rng(9, 1);
  float* p = x.data<float>();
  for (int64_t i = 0; i < x.numel(); ++i) p[i] = float(rng.normal());
  return x;
}

void run_layer(benchmark::State& state, MoeLayer& layer) {
  Tensor x = bench_input();
  x.set_requires_grad(true);
  Tensor seed = Tensor::full({kBatch, kSeq, kDim}, 1e-3);
  for (auto _ : state) {
    layer.zero_grad();
    x.zero_grad();
    Tensor y = layer.forward(x);
    for (const ExtraLoss& l : layer.extra_losses()) y = add(y, l.scaled);
    y.backward(seed);
    benchmark::DoNotOptimize(x.grad().data<float>());
    layer.balancer().update(layer.take_pending_loads());
  }
  const int64_t H = layer.experts().hidden();
  const RoutingStats& st = layer.last_stats();
  // Expert FLOPs of forward + backward (3 GEMMs forward, 6 backward, 2 flops per MAC) over the
  // assignments that reached a real expert (top_p / null_experts route a varying number).
  const double kept = double(st.assignments - st.dropped);
  double flops = 2.0 * 9.0 * kept * double(kDim) * double(H);
  state.counters["assignments/token"] = kept / double(kTokens);
  state.counters["expert_GFLOP/s"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["tokens/s"] = benchmark::Counter(double(kTokens), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["maxvio"] = layer.last_stats().max_vio;
}

void BM_MoeLayerReferenceTopK(benchmark::State& state) {
  Philox rng(1, 1);
  MoeLayer layer(bench_config(), 0, rng, std::make_unique<ReferenceTopK>());
  run_layer(state, layer);
}
BENCHMARK(BM_MoeLayerReferenceTopK)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_MoeLayerStrategy(benchmark::State& state, std::string strategy) {
  Philox rng(1, 1);
  MoeLayer layer(bench_config(strategy), 0, rng);
  run_layer(state, layer);
}

// The routing work of a strategy alone: select and its losses on fixed router output (training
// mode, no backward), the part of the layer that differs between strategies.
void BM_MoeRouting(benchmark::State& state, std::string strategy) {
  ModelConfig c = bench_config(strategy);
  std::unique_ptr<Balancer> b = make_balancer(c.moe);
  Philox init(1, 1), jit(1, 2), sel(1, 3);
  Router router(kDim, b->router_outputs(kExperts), parse_score_function(c.moe.score_function), 0.0, c.init_std, init,
                DType::f32);
  RouterOutput ro = router.forward(bench_input().reshape({kTokens, kDim}), kExperts, kTopK, kSeq, jit);
  for (auto _ : state) {
    Routing r = b->select(ro, sel);
    auto losses = b->extra_losses(ro, r);
    benchmark::DoNotOptimize(r.gate.raw_data());
    clear_tape();
  }
}

const bool kRegistered = [] {
  for (const char* name : kStrategies) {
    benchmark::RegisterBenchmark((std::string("BM_MoeLayerStrategy/") + name).c_str(), BM_MoeLayerStrategy,
                                 std::string(name))
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
    benchmark::RegisterBenchmark((std::string("BM_MoeRouting/") + name).c_str(), BM_MoeRouting, std::string(name))
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
  }
  return true;
}();

// Grouped GEMM over E equal segments (rows T k / E each) vs one sgemm with the same FLOPs:
// [T k, D] x [D, H]. Arg 0: balanced segments; arg 1: skewed (half the rows on 2 experts).
void BM_GroupedExpertGemm(benchmark::State& state) {
  const int64_t N = kTokens * kTopK, H = 688;
  std::vector<int64_t> off(kExperts + 1, 0);
  for (int64_t e = 0; e < kExperts; ++e) {
    int64_t rows = state.range(0) == 0 ? N / kExperts : (e < 2 ? N / 4 : (N / 2) / (kExperts - 2));
    off[size_t(e) + 1] = off[size_t(e)] + rows;
  }
  off.back() = N;
  Tensor x = Tensor::full({N, kDim}, 0.01), w = Tensor::full({kExperts, H, kDim}, 0.02);
  NoGradGuard ng;
  for (auto _ : state) benchmark::DoNotOptimize(grouped_matmul(x, w, off).data<float>());
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * double(N) * double(kDim) * double(H) * 1e-9,
                                                 benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_GroupedExpertGemm)->Arg(0)->Arg(1)->Unit(benchmark::kMicrosecond)->UseRealTime();

void BM_DenseSgemmSameFlops(benchmark::State& state) {
  const int64_t N = kTokens * kTopK, H = 688;
  Tensor x = Tensor::full({N, kDim}, 0.01), w = Tensor::full({H, kDim}, 0.02);
  for (auto _ : state) {
    Tensor y = Tensor::empty({N, H});
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(N), int(H), int(kDim), 1.0f, x.data<float>(), int(kDim),
                w.data<float>(), int(kDim), 0.0f, y.data<float>(), int(H));
    benchmark::DoNotOptimize(y.data<float>());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * double(N) * double(kDim) * double(H) * 1e-9,
                                                 benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_DenseSgemmSameFlops)->Unit(benchmark::kMicrosecond)->UseRealTime();

}  // namespace
