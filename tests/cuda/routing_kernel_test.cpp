// MoE routing kernels: top-k (ties to the lower index), the load histogram, the stable permute
// plan with dropped assignments, the row permutation and the gate-weighted un-permute with its
// backward, all against CPU loops on odd sizes.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>

#include "core/cuda/memory.h"
#include "core/cuda/permute.h"
#include "core/error.h"
#include "core/cuda/router.h"
#include "tests/cuda/kernel_test_util.h"

using namespace moe;
using namespace moe::cuda;
using namespace moe::test;

namespace {

TEST(CudaRouter, TopkMatchesStableSortWithTiesToLowerIndex) {
  const long tokens = 203;
  const int experts = 37, k = 5;
  auto s = random_normal(tokens * experts, 51);
  for (long t = 0; t < tokens; t += 3)  // plant ties: quantized scores repeat within a row
    for (int e = 0; e < experts; ++e) s[t * experts + e] = std::round(s[t * experts + e] * 2) / 2;
  for (int e = 0; e < experts; ++e) s[e] = 1.0f;  // row 0: all equal -> indices 0..k-1
  DeviceBuffer<float> ds(s), vals(tokens * k);
  DeviceBuffer<int32_t> idx(tokens * k);
  router_topk(ds.get(), vals.get(), idx.get(), tokens, experts, k);
  auto v = vals.to_host();
  auto ix = idx.to_host();
  for (long t = 0; t < tokens; ++t) {
    std::vector<int> order(experts);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return s[t * experts + a] > s[t * experts + b]; });
    for (int j = 0; j < k; ++j) {
      ASSERT_EQ(ix[t * k + j], order[j]) << "token " << t << " slot " << j;
      ASSERT_EQ(v[t * k + j], s[t * experts + order[j]]);
    }
  }
  EXPECT_THROW(router_topk(ds.get(), vals.get(), idx.get(), tokens, experts, experts + 1), Error);
}

std::vector<int32_t> random_ids(long n, int experts, unsigned seed, bool with_drops) {
  std::mt19937 gen(uint32_t(test_seed(seed)));
  std::vector<int32_t> ids(n);
  for (auto& id : ids) id = int32_t(gen() % experts);
  for (long i = 0; i < n; i += 4) ids[i] = int32_t(gen() % 3);  // skew: experts 0-2 are hot
  if (with_drops)
    for (long i = 5; i < n; i += 17) ids[i] = -1;
  return ids;
}

TEST(CudaRouter, LoadHistogramCountsEveryValidId) {
  const long n = 3 * 1000 + 7;
  const int experts = 29;
  auto ids = random_ids(n, experts, 52, true);
  DeviceBuffer<int32_t> dids(ids), counts(experts);
  load_histogram(dids.get(), n, experts, counts.get());
  std::vector<int32_t> want(experts, 0);
  for (auto id : ids)
    if (id >= 0) want[id]++;
  EXPECT_EQ(counts.to_host(), want);
}

TEST(CudaPermute, PlanIsAStableGroupingByExpert) {
  const long tokens = 301;
  const int k = 2, experts = 13;
  const long n = tokens * k;  // 602: three chunks, the last partial
  auto ids = random_ids(n, experts, 53, true);
  ids[7] = experts + 4;  // out of range: dropped like -1
  DeviceBuffer<int32_t> dids(ids), offsets(experts + 1), dest(n), source(n);
  permute_plan(dids.get(), n, experts, offsets.get(), dest.get(), source.get());
  // CPU reference: a stable sort of the valid assignments by expert.
  std::vector<int32_t> want_src;
  std::vector<int32_t> want_off(experts + 1, 0), want_dest(n, -1);
  for (int e = 0; e < experts; ++e) {
    want_off[e] = int32_t(want_src.size());
    for (long a = 0; a < n; ++a)
      if (ids[a] == e) want_dest[a] = int32_t(want_src.size()), want_src.push_back(int32_t(a));
  }
  want_off[experts] = int32_t(want_src.size());
  EXPECT_EQ(offsets.to_host(), want_off);
  EXPECT_EQ(dest.to_host(), want_dest);
  auto src = source.to_host();
  src.resize(want_src.size());
  EXPECT_EQ(src, want_src);
}

template <class T>
void check_permute_combine() {
  const long tokens = 37, dim = 45;
  const int k = 3, experts = 7;
  const long n = tokens * k;
  auto ids = random_ids(n, experts, 54, true);
  auto x = round_bf16(random_normal(tokens * dim, 55));
  auto gates = random_normal(n, 56, 0.5f);
  DeviceBuffer<int32_t> dids(ids), offsets(experts + 1), dest(n), source(n);
  permute_plan(dids.get(), n, experts, offsets.get(), dest.get(), source.get());
  DeviceBuffer<T> dx = upload<T>(x), permuted(n * dim);
  permute_rows(dx.get(), source.get(), offsets.get(), experts, n, k, dim, permuted.get());
  auto hdest = dest.to_host();
  auto perm = to_f32(permuted.to_host());
  for (long a = 0; a < n; ++a) {
    if (hdest[a] < 0) continue;
    for (long d = 0; d < dim; ++d) ASSERT_EQ(perm[hdest[a] * dim + d], x[(a / k) * dim + d]) << "assignment " << a;
  }
  // Pretend the experts produced `eo` at each position; combine with gates, then backward.
  auto eo = round_bf16(random_normal(n * dim, 57));
  auto dy = round_bf16(random_normal(tokens * dim, 58));
  DeviceBuffer<T> deo = upload<T>(eo), ddy = upload<T>(dy), y(tokens * dim), d_eo(n * dim);
  DeviceBuffer<float> dgates(gates), d_gates(n);
  d_eo.zero();
  unpermute_combine(deo.get(), dest.get(), dgates.get(), tokens, k, dim, y.get());
  unpermute_combine_backward(ddy.get(), deo.get(), dest.get(), dgates.get(), tokens, k, dim, d_eo.get(), d_gates.get());
  std::vector<double> wy(tokens * dim, 0), wdeo(n * dim, 0), wdg(n, 0);
  for (long a = 0; a < n; ++a) {
    const long t = a / k, p = hdest[a];
    if (p < 0) continue;
    for (long d = 0; d < dim; ++d) {
      wy[t * dim + d] += gates[a] * double(eo[p * dim + d]);
      wdeo[p * dim + d] = gates[a] * double(dy[t * dim + d]);
      wdg[a] += double(dy[t * dim + d]) * eo[p * dim + d];
    }
  }
  EXPECT_TRUE(all_near(to_f32(y.to_host()), wy, atol_for<T>(), rtol_for<T>())) << "combine";
  EXPECT_TRUE(all_near(to_f32(d_eo.to_host()), wdeo, atol_for<T>(), rtol_for<T>())) << "d_expert_out";
  EXPECT_TRUE(all_near(d_gates.to_host(), wdg, 1e-4, 1e-5)) << "d_gates (fp32 dot over dim)";
  // gates = null is the backward of permute_rows: the sum of a token's copies.
  unpermute_combine(permuted.get(), dest.get(), static_cast<const float*>(nullptr), tokens, k, dim, y.get());
  std::vector<double> wsum(tokens * dim, 0);
  for (long a = 0; a < n; ++a)
    if (hdest[a] >= 0)
      for (long d = 0; d < dim; ++d) wsum[(a / k) * dim + d] += x[(a / k) * dim + d];
  EXPECT_TRUE(all_near(to_f32(y.to_host()), wsum, atol_for<T>(), rtol_for<T>())) << "ungated sum";
}

TEST(CudaPermute, PermuteRowsAndGatedCombineF32) { check_permute_combine<float>(); }
TEST(CudaPermute, PermuteRowsAndGatedCombineBf16) { check_permute_combine<bf16>(); }

}  // namespace
