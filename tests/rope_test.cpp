// rope: values against the rotate-half formula in double, position-offset consistency, norm
// preservation, f64 gradient check, and shape errors.
#include <gtest/gtest.h>

#include <cmath>

#include "core/ops.h"
#include "tests/gradcheck.h"

using namespace moe;
using test::randn_f64;

namespace {

std::vector<double> naive_rope(const std::vector<double>& x, const Shape& s, double theta, int64_t off) {
  int64_t B = s[0], S = s[1], H = s[2], D = s[3], half = D / 2;
  std::vector<double> out(x.size());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t p = 0; p < S; ++p)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t i = 0; i < half; ++i) {
          double ang = double(off + p) * std::pow(theta, -2.0 * double(i) / double(D));
          size_t base = size_t(((b * S + p) * H + h) * D);
          double x1 = x[base + size_t(i)], x2 = x[base + size_t(i + half)];
          out[base + size_t(i)] = x1 * std::cos(ang) - x2 * std::sin(ang);
          out[base + size_t(i + half)] = x2 * std::cos(ang) + x1 * std::sin(ang);
        }
  return out;
}

}  // namespace

TEST(Rope, MatchesRotateHalfFormula) {
  Shape s{2, 7, 3, 10};
  Tensor x = randn_f64(s, 1, 1.0, false);
  for (int64_t off : {0, 5, 3000}) {
    std::vector<double> ref = naive_rope(x.to_vector<double>(), s, 10000.0, off);
    std::vector<double> got = rope(x, 10000.0, off).to_vector<double>();
    for (size_t i = 0; i < ref.size(); ++i) ASSERT_NEAR(got[i], ref[i], 1e-12) << "offset " << off << " at " << i;
    std::vector<float> got32 = rope(x.to(DType::f32), 10000.0, off).to_vector<float>();
    for (size_t i = 0; i < ref.size(); ++i) ASSERT_NEAR(got32[i], ref[i], 2e-5) << "f32, offset " << off << " at " << i;
  }
  // Hand value: Dh = 2, position 1, angle 1 rad rotates (1, 0) to (cos 1, sin 1).
  Tensor e = Tensor::from_vector<double>({0, 0, 1, 0}, {1, 2, 1, 2});
  std::vector<double> r = rope(e, 500.0).to_vector<double>();
  EXPECT_NEAR(r[2], std::cos(1.0), 1e-15);
  EXPECT_NEAR(r[3], std::sin(1.0), 1e-15);
  // Position 0 is the identity.
  EXPECT_EQ(r[0], 0.0);
}

TEST(Rope, OffsetMatchesLaterPositionsAndPreservesPairNorms) {
  Shape s{1, 9, 2, 8};
  Tensor x = randn_f64(s, 2, 1.0, false);
  Tensor full = rope(x, 500.0, 0);
  Tensor tail = rope(x.slice(1, 4, 9), 500.0, 4);
  std::vector<double> a = full.slice(1, 4, 9).contiguous().to_vector<double>(), b = tail.to_vector<double>();
  for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], b[i], 1e-13);
  std::vector<double> xv = x.to_vector<double>(), ov = full.to_vector<double>();
  for (size_t v = 0; v < xv.size() / 8; ++v)
    for (size_t i = 0; i < 4; ++i) {
      double n0 = std::hypot(xv[v * 8 + i], xv[v * 8 + i + 4]), n1 = std::hypot(ov[v * 8 + i], ov[v * 8 + i + 4]);
      ASSERT_NEAR(n0, n1, 1e-13);
    }
}

TEST(Rope, Gradcheck) {
  Tensor x = randn_f64({2, 5, 3, 6}, 3);
  EXPECT_GRADCHECK([](const std::vector<Tensor>& v) { return rope(v[0], 10000.0, 0); }, {x});
  EXPECT_GRADCHECK([](const std::vector<Tensor>& v) { return rope(v[0], 77.0, 11); }, {x});
  // Non-contiguous input: a transposed [B, H, S, Dh] view.
  Tensor y = randn_f64({2, 3, 5, 6}, 4);
  EXPECT_GRADCHECK([](const std::vector<Tensor>& v) { return rope(v[0].transpose(1, 2), 10000.0, 2); }, {y});
}

TEST(Rope, BadShapesThrow) {
  try {
    rope(Tensor::zeros({1, 2, 3, 5}));
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rope: head dim Dh must be even, got 5 in x [1, 2, 3, 5]"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(rope(Tensor::zeros({2, 3, 4})), Error);
  EXPECT_THROW(rope(Tensor::zeros({1, 2, 3, 4}), -1.0), Error);
}
