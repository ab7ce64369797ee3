// Dispatch: counting-sort plan (offsets, stability, token CSR), permute / combine values and
// f64 gradient checks including dropped assignments.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>

#include "core/ops.h"
#include "layers/moe/dispatch.h"
#include "tests/gradcheck.h"

using namespace moe;
using test::randn_f64;

namespace {
Tensor i64(std::vector<int64_t> v) {
  int64_t n = int64_t(v.size());
  return Tensor::from_vector<int64_t>(v, {n});
}
}  // namespace

TEST(MoeDispatch, CountingSortIsStableAndOffsetsAreCounts) {
  //                   a0 a1 a2 a3 a4 a5 a6 a7
  Tensor token = i64({0, 0, 1, 1, 2, 2, 3, 3});
  Tensor expert = i64({2, 0, 2, 1, 0, 2, 2, 0});
  DispatchPlanPtr p = make_dispatch_plan(token, expert, {0, 1, 2, 3, 4, 5, 6, 7}, 4, 4);
  EXPECT_EQ(p->offsets, (std::vector<int64_t>{0, 3, 4, 8, 8}));  // expert 3 empty
  // Within each expert, assignments keep list order.
  EXPECT_EQ(p->order, (std::vector<int64_t>{1, 4, 7, 3, 0, 2, 5, 6}));
  EXPECT_EQ(p->token, (std::vector<int64_t>{0, 2, 3, 1, 0, 1, 2, 3}));
  EXPECT_EQ(p->token_offsets, (std::vector<int64_t>{0, 2, 4, 6, 8}));
  // Token 0's positions in list order: a0 -> pos 4, a1 -> pos 0.
  EXPECT_EQ(std::vector<int64_t>(p->token_slots.begin(), p->token_slots.begin() + 2), (std::vector<int64_t>{4, 0}));
  // With a0, a5 dropped: token 2 keeps a4 only; expert 2 keeps a2, a6.
  DispatchPlanPtr q = make_dispatch_plan(token, expert, {1, 2, 3, 4, 6, 7}, 4, 4);
  EXPECT_EQ(q->offsets, (std::vector<int64_t>{0, 3, 4, 6, 6}));
  EXPECT_EQ(q->order, (std::vector<int64_t>{1, 4, 7, 3, 2, 6}));
  EXPECT_EQ(q->token_offsets, (std::vector<int64_t>{0, 1, 3, 4, 6}));
  EXPECT_EQ(q->num_assignments, 8);
}

TEST(MoeDispatch, StabilityOnManyEqualKeys) {
  // 200 assignments over 3 experts: each segment must list its assignments in increasing order.
  std::vector<int64_t> tok, ex, kept;
  for (int64_t a = 0; a < 200; ++a) {
    tok.push_back(a / 2);
    ex.push_back((a * 7 + a / 3) % 3);
    kept.push_back(a);
  }
  DispatchPlanPtr p = make_dispatch_plan(i64(tok), i64(ex), kept, 100, 3);
  for (int64_t e = 0; e < 3; ++e)
    for (int64_t s = p->offsets[e]; s < p->offsets[e + 1]; ++s) {
      EXPECT_EQ(ex[p->order[s]], e);
      if (s > p->offsets[e]) {
        EXPECT_LT(p->order[s - 1], p->order[s]);
      }
    }
  EXPECT_EQ(p->offsets.back(), 200);
}

// The plan read in place from i32 ids, i64 ids or one of each (the routing returns i32) equals
// a plan built by std::stable_sort over the kept assignments, with random drops.
TEST(MoeDispatch, IdsOfEitherWidthGiveTheStableSortPlan) {
  const int64_t T = 97, E = 7, k = 3, A = T * k;
  std::mt19937 g(3);
  std::vector<int64_t> tok(static_cast<size_t>(A)), ex(static_cast<size_t>(A)), kept;
  for (int64_t a = 0; a < A; ++a) {
    tok[size_t(a)] = (a * 31) % T;  // tokens out of list order
    ex[size_t(a)] = int64_t(g() % E);
    if (g() % 5) kept.push_back(a);
  }
  std::vector<int64_t> order = kept;  // the reference: a stable sort of the kept list by expert
  std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return ex[size_t(x)] < ex[size_t(y)]; });
  std::vector<int64_t> pos(static_cast<size_t>(A), -1);
  for (size_t p = 0; p < order.size(); ++p) pos[size_t(order[p])] = int64_t(p);
  std::vector<int64_t> by_token = kept;  // each token's assignments in list order
  std::stable_sort(by_token.begin(), by_token.end(),
                   [&](int64_t x, int64_t y) { return tok[size_t(x)] < tok[size_t(y)]; });
  std::vector<int32_t> tok32(tok.begin(), tok.end()), ex32(ex.begin(), ex.end());
  const Tensor t64 = i64(tok), e64 = i64(ex), t32 = Tensor::from_vector<int32_t>(tok32, {A}),
               e32 = Tensor::from_vector<int32_t>(ex32, {A});
  for (auto [token, expert] : {std::pair{t64, e64}, std::pair{t32, e32}, std::pair{t32, e64}, std::pair{t64, e32}}) {
    DispatchPlanPtr p = make_dispatch_plan(token, expert, kept, T, E);
    EXPECT_EQ(p->order, order);
    ASSERT_EQ(p->kept(), int64_t(kept.size()));
    for (int64_t s = 0; s < p->kept(); ++s) EXPECT_EQ(p->token[size_t(s)], tok[size_t(order[size_t(s)])]);
    for (int64_t e = 0; e < E; ++e)
      EXPECT_EQ(p->offsets[size_t(e) + 1] - p->offsets[size_t(e)],
                std::count_if(kept.begin(), kept.end(), [&](int64_t a) { return ex[size_t(a)] == e; }));
    for (size_t i = 0; i < by_token.size(); ++i) EXPECT_EQ(p->token_slots[i], pos[size_t(by_token[i])]);
    for (int64_t t = 0; t < T; ++t)
      EXPECT_EQ(p->token_offsets[size_t(t) + 1],
                std::count_if(kept.begin(), kept.end(), [&](int64_t a) { return tok[size_t(a)] <= t; }));
  }
}

TEST(MoeDispatch, PermuteAndCombineValues) {
  Tensor x = Tensor::from_vector<double>({1, 2, 3, 4, 5, 6}, {3, 2});
  Tensor token = i64({0, 0, 1, 2}), expert = i64({1, 0, 1, 0});
  DispatchPlanPtr p = make_dispatch_plan(token, expert, {0, 1, 3}, 3, 2);  // a2 (token 1) dropped
  Tensor xs = permute_tokens(x, p);
  // Sorted: expert 0 {a1 (t0), a3 (t2)}, expert 1 {a0 (t0)}.
  EXPECT_EQ(xs.to_vector<double>(), (std::vector<double>{1, 2, 5, 6, 1, 2}));
  Tensor gate = Tensor::from_vector<double>({0.25, 0.75, 9, 0.5}, {4});
  Tensor y = Tensor::from_vector<double>({10, 20, 30, 40, 50, 60}, {3, 2});
  Tensor out = unpermute_combine(y, gate, p);
  // t0: 0.75 * [10, 20] + 0.25 * [50, 60]; t1: nothing kept; t2: 0.5 * [30, 40].
  EXPECT_EQ(out.to_vector<double>(), (std::vector<double>{20, 30, 0, 0, 15, 20}));
}

TEST(MoeDispatch, GradcheckPermuteAndCombine) {
  // T = 7, D = 5, E = 3, k = 2 with two assignments dropped.
  std::vector<int64_t> tok, ex;
  for (int64_t t = 0; t < 7; ++t) {
    tok.insert(tok.end(), {t, t});
    ex.insert(ex.end(), {t % 3, (t + 1) % 3});
  }
  DispatchPlanPtr p = make_dispatch_plan(i64(tok), i64(ex), {0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 12, 13}, 7, 3);
  EXPECT_GRADCHECK([p](const std::vector<Tensor>& v) { return permute_tokens(v[0], p); }, {randn_f64({7, 5}, 1)});
  EXPECT_GRADCHECK([p](const std::vector<Tensor>& v) { return unpermute_combine(v[0], v[1], p); },
                   {randn_f64({12, 5}, 2), randn_f64({14}, 3)});
  // The composition (permute, a per-row nonlinearity, combine) as in the layer.
  EXPECT_GRADCHECK(
      [p](const std::vector<Tensor>& v) { return unpermute_combine(square(permute_tokens(v[0], p)), v[1], p); },
      {randn_f64({7, 5}, 4), randn_f64({14}, 5)});
  // Dropped gates get exactly zero gradient.
  Tensor g = randn_f64({14}, 6);
  unpermute_combine(randn_f64({12, 5}, 7, 1.0, false), g, p).backward(Tensor::ones({7, 5}, DType::f64));
  EXPECT_EQ(g.grad().to_vector<double>()[3], 0.0);
  EXPECT_EQ(g.grad().to_vector<double>()[11], 0.0);
  EXPECT_NE(g.grad().to_vector<double>()[2], 0.0);
}

TEST(MoeDispatch, BadIndicesAreRefused) {
  EXPECT_THROW(make_dispatch_plan(i64({0, 1}), i64({0, 5}), {0, 1}, 2, 3), Error);
  EXPECT_THROW(make_dispatch_plan(i64({0, 4}), i64({0, 1}), {0, 1}, 2, 3), Error);
  EXPECT_THROW(make_dispatch_plan(i64({0, 1}), i64({0, 1}), {1, 0}, 2, 3), Error);
}
