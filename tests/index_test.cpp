// gather / scatter_add / index_select / index_add: values against naive loops along every dim,
// i32 and i64 indices, repeated indices, f64 gradient checks, out-of-range errors.
#include <gtest/gtest.h>

#include "core/ops.h"
#include "tests/gradcheck.h"

using namespace moe;
using test::randn_f64;

namespace {

// Deterministic pseudo-random indices in [0, size) (repeats on purpose).
template <class I>
Tensor make_index(const Shape& shape, int64_t size, uint64_t seed) {
  std::vector<I> v(size_t(shape_numel(shape)));
  uint64_t s = seed * 2654435761u + 12345;
  for (auto& x : v) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    x = I((s >> 33) % uint64_t(size));
  }
  return Tensor::from_vector<I>(v, shape);
}

int64_t flat3(const Shape& s, int64_t a, int64_t b, int64_t c) { return (a * s[1] + b) * s[2] + c; }

// Coordinates (a, b, c) with coordinate `dim` replaced by v.
void put(int64_t dim, int64_t v, int64_t& a, int64_t& b, int64_t& c) { (dim == 0 ? a : dim == 1 ? b : c) = v; }

}  // namespace

TEST(Index, GatherAndScatterAddMatchNaiveLoopsOnEveryDim) {
  Shape xs{4, 5, 6};
  for (int64_t dim = 0; dim < 3; ++dim) {
    Tensor x = randn_f64(xs, 100 + uint64_t(dim), 1.0, false);
    // index smaller than x in the other dims, longer along dim, as PyTorch allows.
    Shape is{3, 4, 5};
    is[size_t(dim)] = 9;
    Tensor idx = make_index<int64_t>(is, xs[size_t(dim)], 7 + uint64_t(dim));
    Tensor out = gather(x, dim, idx);
    ASSERT_EQ(out.shape(), is);
    std::vector<double> xv = x.to_vector<double>(), ov = out.to_vector<double>();
    std::vector<int64_t> iv = idx.to_vector<int64_t>();
    for (int64_t a = 0; a < is[0]; ++a)
      for (int64_t b = 0; b < is[1]; ++b)
        for (int64_t c = 0; c < is[2]; ++c) {
          int64_t i = iv[size_t(flat3(is, a, b, c))], xa = a, xb = b, xc = c;
          put(dim, i, xa, xb, xc);
          ASSERT_EQ(ov[size_t(flat3(is, a, b, c))], xv[size_t(flat3(xs, xa, xb, xc))]) << "dim " << dim;
        }
    // scatter_add with the same index and a src of index's shape, into a random base.
    Tensor base = randn_f64(xs, 200 + uint64_t(dim), 1.0, false);
    Tensor src = randn_f64(is, 300 + uint64_t(dim), 1.0, false);
    Tensor sa = scatter_add(base, dim, idx, src);
    std::vector<double> ref = base.to_vector<double>(), sv = src.to_vector<double>();
    for (int64_t a = 0; a < is[0]; ++a)
      for (int64_t b = 0; b < is[1]; ++b)
        for (int64_t c = 0; c < is[2]; ++c) {
          int64_t i = iv[size_t(flat3(is, a, b, c))], xa = a, xb = b, xc = c;
          put(dim, i, xa, xb, xc);
          ref[size_t(flat3(xs, xa, xb, xc))] += sv[size_t(flat3(is, a, b, c))];
        }
    std::vector<double> got = sa.to_vector<double>();
    for (size_t k = 0; k < ref.size(); ++k) ASSERT_NEAR(got[k], ref[k], 1e-12) << "dim " << dim << " at " << k;
  }
}

TEST(Index, GatherReadsNonContiguousViewsAndI32Indices) {
  Tensor x = Tensor::arange(12, DType::f32).reshape({3, 4}).transpose(0, 1);  // [4, 3], x[i][j] = 4j + i
  Tensor idx = Tensor::from_vector<int32_t>({2, 0, 1, 1, 0, 0, 2, 2}, {4, 2});
  EXPECT_EQ(gather(x, 1, idx).to_vector<float>(), (std::vector<float>{8, 0, 5, 5, 2, 2, 11, 11}));
  Tensor ii = Tensor::from_vector<int64_t>({10, 20, 30, 40}, {2, 2});
  EXPECT_EQ(gather(ii, 0, Tensor::from_vector<int32_t>({1, 0}, {1, 2})).to_vector<int64_t>(),
            (std::vector<int64_t>{30, 20}));
}

TEST(Index, ScatterAddIsDeterministicAndSumsRepeatsInOrder) {
  // Many repeats into few slots, f32: the result must equal the sequential ascending sum bit for bit.
  int64_t rows = 3, n = 4000, slots = 5;
  Tensor src = test::randn_f32({rows, n}, 41);
  Tensor idx = make_index<int64_t>({rows, n}, slots, 42);
  Tensor base = test::randn_f32({rows, slots}, 43);
  Tensor out = scatter_add(base, 1, idx, src);
  std::vector<float> ref = base.to_vector<float>(), sv = src.to_vector<float>();
  std::vector<int64_t> iv = idx.to_vector<int64_t>();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < n; ++j) ref[size_t(r * slots + iv[size_t(r * n + j)])] += sv[size_t(r * n + j)];
  EXPECT_EQ(out.to_vector<float>(), ref);
  EXPECT_EQ(scatter_add(base, 1, idx, src).to_vector<float>(), out.to_vector<float>());
  // Along dim 0 with a wide inner dim (the parallel-over-columns path).
  Tensor src0 = test::randn_f32({400, 600}, 44), idx0 = make_index<int32_t>({400, 600}, 7, 45);
  Tensor out0 = scatter_add(Tensor::zeros({7, 600}), 0, idx0, src0);
  std::vector<float> ref0(7 * 600, 0.f), s0 = src0.to_vector<float>();
  std::vector<int32_t> i0 = idx0.to_vector<int32_t>();
  for (int64_t j = 0; j < 400; ++j)
    for (int64_t t = 0; t < 600; ++t) ref0[size_t(i0[size_t(j * 600 + t)] * 600 + t)] += s0[size_t(j * 600 + t)];
  EXPECT_EQ(out0.to_vector<float>(), ref0);
}

TEST(Index, IndexSelectAndIndexAddMatchNaiveLoopsOnEveryDim) {
  Shape xs{3, 5, 7};
  for (int64_t dim = 0; dim < 3; ++dim) {
    Tensor x = randn_f64(xs, 500 + uint64_t(dim), 1.0, false);
    Tensor idx = make_index<int32_t>({9}, xs[size_t(dim)], 60 + uint64_t(dim));
    Tensor out = index_select(x, dim, idx);
    Shape os = xs;
    os[size_t(dim)] = 9;
    ASSERT_EQ(out.shape(), os);
    std::vector<double> xv = x.to_vector<double>(), ov = out.to_vector<double>();
    std::vector<int32_t> iv = idx.to_vector<int32_t>();
    Tensor src = randn_f64(os, 600 + uint64_t(dim), 1.0, false);
    Tensor base = randn_f64(xs, 700 + uint64_t(dim), 1.0, false);
    std::vector<double> sv = src.to_vector<double>(), ref = base.to_vector<double>();
    for (int64_t a = 0; a < os[0]; ++a)
      for (int64_t b = 0; b < os[1]; ++b)
        for (int64_t c = 0; c < os[2]; ++c) {
          int64_t j = dim == 0 ? a : dim == 1 ? b : c, xa = a, xb = b, xc = c;
          put(dim, iv[size_t(j)], xa, xb, xc);
          ASSERT_EQ(ov[size_t(flat3(os, a, b, c))], xv[size_t(flat3(xs, xa, xb, xc))]);
          ref[size_t(flat3(xs, xa, xb, xc))] += sv[size_t(flat3(os, a, b, c))];
        }
    std::vector<double> got = index_add(base, dim, idx, src).to_vector<double>();
    for (size_t k = 0; k < ref.size(); ++k) ASSERT_NEAR(got[k], ref[k], 1e-12) << "dim " << dim << " at " << k;
  }
  // Integer payloads: counting tokens per expert with index_add of ones.
  Tensor experts = Tensor::from_vector<int64_t>({2, 0, 2, 2, 1}, {5});
  EXPECT_EQ(index_add(Tensor::zeros({4}, DType::i64), 0, experts, Tensor::ones({5}, DType::i64)).to_vector<int64_t>(),
            (std::vector<int64_t>{1, 1, 3, 0}));
}

TEST(Index, GradcheckWithRepeatedIndices) {
  Tensor x = randn_f64({3, 5, 4}, 81);
  Tensor gidx = Tensor::from_vector<int64_t>({0, 4, 4, 1, 2, 2, 0, 3, 4, 4, 4, 1,  //
                                              3, 3, 0, 1, 2, 4, 4, 0, 1, 1, 2, 3,  //
                                              0, 0, 0, 0, 4, 1, 2, 3, 3, 2, 1, 0},
                                             {3, 3, 4});
  EXPECT_GRADCHECK([&](const std::vector<Tensor>& v) { return gather(v[0], 1, gidx); }, {x});
  Tensor base = randn_f64({3, 5, 4}, 82), src = randn_f64({3, 3, 4}, 83);
  EXPECT_GRADCHECK([&](const std::vector<Tensor>& v) { return scatter_add(v[0], 1, gidx, v[1]); }, {base, src});
  Tensor sidx = Tensor::from_vector<int32_t>({4, 1, 4, 0, 4, 2, 1}, {7});
  EXPECT_GRADCHECK([&](const std::vector<Tensor>& v) { return index_select(v[0], 1, sidx); }, {x});
  Tensor src2 = randn_f64({3, 7, 4}, 84);
  EXPECT_GRADCHECK([&](const std::vector<Tensor>& v) { return index_add(v[0], 1, sidx, v[1]); }, {base, src2});
  Tensor src3 = randn_f64({7, 5, 4}, 85);
  Tensor idx0 = Tensor::from_vector<int64_t>({2, 2, 0, 1, 2, 0, 0}, {7});
  EXPECT_GRADCHECK([&](const std::vector<Tensor>& v) { return index_add(v[0], 0, idx0, v[1]); }, {base, src3});
  EXPECT_GRADCHECK(
      [&](const std::vector<Tensor>& v) {
        return index_select(v[0], -1, Tensor::from_vector<int64_t>({3, 1, 3, 0, 2}, {5}));
      },
      {x});
}

TEST(Index, OutOfRangeIndexThrowsNamingOpValueAndSize) {
  Tensor x = Tensor::zeros({2, 3});
  auto message = [](auto&& f) {
    try {
      f();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  std::string m = message([&] { gather(x, 1, Tensor::from_vector<int64_t>({0, 3}, {1, 2})); });
  EXPECT_NE(m.find("gather"), std::string::npos) << m;
  EXPECT_NE(m.find("index 3"), std::string::npos) << m;
  EXPECT_NE(m.find("size 3"), std::string::npos) << m;
  m = message([&] { index_select(x, 0, Tensor::from_vector<int32_t>({-1}, {1})); });
  EXPECT_NE(m.find("index_select: index -1"), std::string::npos) << m;
  EXPECT_NE(m.find("size 2"), std::string::npos) << m;
  m = message([&] { index_add(x, 0, Tensor::from_vector<int64_t>({5}, {1}), Tensor::zeros({1, 3})); });
  EXPECT_NE(m.find("index_add: index 5"), std::string::npos) << m;
  m = message([&] { scatter_add(x, 0, Tensor::from_vector<int64_t>({2}, {1, 1}), Tensor::zeros({1, 1})); });
  EXPECT_NE(m.find("scatter_add: index 2"), std::string::npos) << m;
  m = message([&] { index_add(x, 0, Tensor::from_vector<int64_t>({1}, {1}), Tensor::zeros({2, 3})); });
  EXPECT_NE(m.find("index_add: src [2, 3] must be [1, 3]"), std::string::npos) << m;
  m = message([&] { gather(x, 0, Tensor::zeros({2, 3})); });
  EXPECT_NE(m.find("gather: expected an index dtype"), std::string::npos) << m;
  m = message([&] { gather(x, 0, Tensor::zeros({2}, DType::i64)); });
  EXPECT_NE(m.find("gather: index [2] must have the rank of x [2, 3]"), std::string::npos) << m;
}
