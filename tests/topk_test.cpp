// topk: values and indices against a full stable sort, ties to the lower index, NaN first,
// f64 gradient check of the values, and k range errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/ops.h"
#include "tests/gradcheck.h"

using namespace moe;
using test::randn_f64;

namespace {

// Reference: the first k of a full sort by (value descending, index ascending).
void naive_topk(const std::vector<float>& x, int64_t n, int64_t k, std::vector<float>& v, std::vector<int64_t>& ix) {
  int64_t rows = int64_t(x.size()) / n;
  v.clear();
  ix.clear();
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<int64_t> o(static_cast<size_t>(n));
    std::iota(o.begin(), o.end(), int64_t(0));
    std::stable_sort(o.begin(), o.end(),
                     [&](int64_t a, int64_t b) { return x[size_t(r * n + a)] > x[size_t(r * n + b)]; });
    for (int64_t j = 0; j < k; ++j) {
      ix.push_back(o[size_t(j)]);
      v.push_back(x[size_t(r * n + o[size_t(j)])]);
    }
  }
}

}  // namespace

TEST(TopK, MatchesFullSortWithTiesToLowerIndex) {
  // Values rounded to a few levels so most rows have many ties.
  Tensor r = test::randn_f32({6, 5, 37}, 91);
  std::vector<float> xv = r.to_vector<float>();
  for (float& f : xv) f = std::round(f * 2.f) / 2.f;
  Tensor x = Tensor::from_vector<float>(xv, {6, 5, 37});
  for (int64_t k : {1, 3, 8, 37}) {
    TopK t = topk(x, k);
    ASSERT_EQ(t.values.shape(), (Shape{6, 5, k}));
    ASSERT_EQ(t.indices.dtype(), DType::i64);
    std::vector<float> v;
    std::vector<int64_t> ix;
    naive_topk(xv, 37, k, v, ix);
    EXPECT_EQ(t.values.to_vector<float>(), v) << "k " << k;
    EXPECT_EQ(t.indices.to_vector<int64_t>(), ix) << "k " << k;
  }
  Tensor tie = Tensor::from_vector<double>({1, 3, 3, 2, 3}, {5});
  EXPECT_EQ(topk(tie, 2).indices.to_vector<int64_t>(), (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(topk(tie, 4).values.to_vector<double>(), (std::vector<double>{3, 3, 3, 2}));
}

TEST(TopK, LargeRowsInParallelAndNonContiguousInput) {
  Tensor x = test::randn_f32({64, 1000}, 92);
  TopK t = topk(x, 5);
  std::vector<float> v;
  std::vector<int64_t> ix;
  naive_topk(x.to_vector<float>(), 1000, 5, v, ix);
  EXPECT_EQ(t.values.to_vector<float>(), v);
  EXPECT_EQ(t.indices.to_vector<int64_t>(), ix);
  Tensor xt = x.slice(1, 0, 9).transpose(0, 1);  // [9, 64], strided
  TopK tt = topk(xt, 2);
  naive_topk(xt.contiguous().to_vector<float>(), 64, 2, v, ix);
  EXPECT_EQ(tt.values.to_vector<float>(), v);
  EXPECT_EQ(tt.indices.to_vector<int64_t>(), ix);
}

TEST(TopK, NanRanksFirst) {
  Tensor x = Tensor::from_vector<float>({1.f, NAN, 5.f, -2.f}, {4});
  EXPECT_EQ(topk(x, 2).indices.to_vector<int64_t>(), (std::vector<int64_t>{1, 2}));
}

TEST(TopK, GradcheckValues) {
  Tensor x = randn_f64({4, 11}, 93);
  EXPECT_GRADCHECK([](const std::vector<Tensor>& v) { return topk(v[0], 3).values; }, {x});
  Tensor y = randn_f64({2, 3, 7}, 94);
  EXPECT_GRADCHECK([](const std::vector<Tensor>& v) { return topk(v[0], 7).values; }, {y});
  // Only the selected entries receive gradient.
  Tensor z = Tensor::from_vector<double>({0.5, 2.0, -1.0, 3.0, 1.0}, {5});
  z.set_requires_grad(true);
  sum_all(topk(z, 2).values).backward();
  EXPECT_EQ(z.grad().to_vector<double>(), (std::vector<double>{0, 1, 0, 1, 0}));
}

TEST(TopK, KOutOfRangeThrows) {
  Tensor x = Tensor::zeros({2, 4});
  try {
    topk(x, 5);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("topk: k = 5 must be in [1, 4] for x [2, 4]"), std::string::npos) << e.what();
  }
  EXPECT_THROW(topk(x, 0), Error);
  EXPECT_THROW(topk(Tensor::zeros({3}, DType::i64), 1), Error);
}
