// concat / split: values against slices along every dim, round trips, f64 gradient checks,
// shape errors naming the op and both shapes.
#include <gtest/gtest.h>

#include "core/ops.h"
#include "tests/gradcheck.h"

using namespace moe;
using test::randn_f64;

TEST(Concat, ConcatMatchesSlicesAndSplitInvertsIt) {
  for (int64_t dim = 0; dim < 3; ++dim) {
    Shape a{3, 4, 5}, b{3, 4, 5}, c{3, 4, 5};
    a[size_t(dim)] = 2;
    b[size_t(dim)] = 1;
    c[size_t(dim)] = 6;
    Tensor x = randn_f64(a, 1, 1.0, false), y = randn_f64(b, 2, 1.0, false), z = randn_f64(c, 3, 1.0, false);
    Tensor out = concat({x, y, z}, dim - 3);  // negative dim
    Shape os{3, 4, 5};
    os[size_t(dim)] = 9;
    ASSERT_EQ(out.shape(), os);
    EXPECT_EQ(out.slice(dim, 0, 2).contiguous().to_vector<double>(), x.to_vector<double>());
    EXPECT_EQ(out.slice(dim, 2, 3).contiguous().to_vector<double>(), y.to_vector<double>());
    EXPECT_EQ(out.slice(dim, 3, 9).contiguous().to_vector<double>(), z.to_vector<double>());
    std::vector<Tensor> parts = split(out, {2, 1, 6}, dim);
    ASSERT_EQ(parts.size(), 3u);
    EXPECT_EQ(parts[0].to_vector<double>(), x.to_vector<double>());
    EXPECT_EQ(parts[1].to_vector<double>(), y.to_vector<double>());
    EXPECT_EQ(parts[2].to_vector<double>(), z.to_vector<double>());
  }
  // Integer tensors, an empty piece, and a non-contiguous input.
  Tensor i = Tensor::from_vector<int64_t>({1, 2, 3, 4}, {2, 2});
  EXPECT_EQ(concat({i, Tensor::zeros({2, 0}, DType::i64), i.transpose(0, 1)}, 1).to_vector<int64_t>(),
            (std::vector<int64_t>{1, 2, 1, 3, 3, 4, 2, 4}));
  std::vector<Tensor> p = split(Tensor::arange(5, DType::i32), {0, 3, 2}, 0);
  EXPECT_EQ(p[0].numel(), 0);
  EXPECT_EQ(p[2].to_vector<int32_t>(), (std::vector<int32_t>{3, 4}));
}

TEST(Concat, Gradcheck) {
  Tensor x = randn_f64({3, 2, 5}, 11), y = randn_f64({3, 7, 5}, 12);
  EXPECT_GRADCHECK([](const std::vector<Tensor>& v) { return concat({v[0], v[1], v[0]}, 1); }, {x, y});
  Tensor z = randn_f64({3, 9, 5}, 13);
  // Weight the pieces differently so a swapped or misplaced grad cannot pass.
  EXPECT_GRADCHECK(
      [](const std::vector<Tensor>& v) {
        std::vector<Tensor> p = split(v[0], {4, 0, 5}, 1);
        return add(sum(p[0], {1}), mul_scalar(sum(p[2], {1}), 3.0));
      },
      {z});
  EXPECT_GRADCHECK([](const std::vector<Tensor>& v) { return split(v[0], {1, 2}, 0)[1]; }, {z});
  EXPECT_GRADCHECK([](const std::vector<Tensor>& v) { return split(v[0], {2, 3}, 2)[0]; }, {z});
}

TEST(Concat, ShapeErrorsNameOpAndShapes) {
  auto message = [](auto&& f) {
    try {
      f();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  std::string m = message([] { concat({Tensor::zeros({2, 3}), Tensor::zeros({3, 3})}, 1); });
  EXPECT_NE(m.find("concat: tensor 1 [3, 3] does not match tensor 0 [2, 3] outside dim 1"), std::string::npos) << m;
  m = message([] { concat({Tensor::zeros({2, 3}), Tensor::zeros({2, 3}, DType::f64)}, 0); });
  EXPECT_NE(m.find("concat: tensor 1 has dtype f64"), std::string::npos) << m;
  m = message([] { split(Tensor::zeros({2, 5}), {2, 2}, 1); });
  EXPECT_NE(m.find("split: sizes sum to 4 but dim 1 of x [2, 5] is 5"), std::string::npos) << m;
  EXPECT_THROW(concat({}, 0), Error);
}
