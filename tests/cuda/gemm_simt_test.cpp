// The SIMT GEMM (gemm_simt.h) under the emulation or on a GPU: every transpose pair, odd sizes
// that cut the 64 x 64 tiles and the 16-deep K slices, padded leading dims, alpha / beta, against
// a double loop over the same (bf16-rounded where stored in bf16) inputs.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "core/cuda/gemm_simt.h"
#include "core/cuda/memory.h"
#include "core/error.h"
#include "tests/cuda/kernel_test_util.h"

using namespace moe;
using namespace moe::cuda;
using namespace moe::test;

namespace {

// Max |got - want| over max |want| (the relative-to-the-largest-entry error of the brief).
double rel_to_max(const std::vector<float>& got, const std::vector<double>& want) {
  double err = 0, scale = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    err = std::max(err, std::abs(double(got[i]) - want[i]));
    if (std::isnan(got[i])) err = std::numeric_limits<double>::infinity();
    scale = std::max(scale, std::abs(want[i]));
  }
  return err / std::max(scale, 1e-30);
}

// beta = 0 starts C as NaN: the kernel must not read it.
template <class Tin, class Tout>
void check_simt(bool ta, bool tb, long m, long n, long k, long pad, float alpha, float beta, double tol) {
  const long lda = (ta ? m : k) + pad, ldb = (tb ? k : n) + pad, ldc = n + pad;
  const long a_rows = ta ? k : m, b_rows = tb ? n : k;
  auto a = round_bf16(random_normal(size_t(a_rows * lda), unsigned(11 + m))),
       b = round_bf16(random_normal(size_t(b_rows * ldb), unsigned(12 + n)));
  std::vector<float> c0 = round_bf16(random_normal(size_t(m * ldc), unsigned(13 + k)));
  if (beta == 0.0f) c0.assign(c0.size(), std::numeric_limits<float>::quiet_NaN());
  DeviceBuffer<Tin> da = upload<Tin>(a), db = upload<Tin>(b);
  DeviceBuffer<Tout> dc = upload<Tout>(c0);
  gemm_simt<Tin, Tout>(ta, tb, m, n, k, alpha, da.get(), lda, db.get(), ldb, beta, dc.get(), ldc);
  const std::vector<float> c = to_f32(dc.to_host());
  std::vector<float> got;
  std::vector<double> want;
  for (long i = 0; i < m; ++i)
    for (long j = 0; j < ldc; ++j) {
      const size_t at = size_t(i * ldc + j);
      if (j >= n) {  // padding columns of C are never written
        if (beta == 0.0f) EXPECT_TRUE(std::isnan(c[at])) << "padding (" << i << ", " << j << ") written";
        else EXPECT_EQ(c[at], c0[at]);  // c0 holds bf16 values: exact in either type
        continue;
      }
      double s = 0;
      for (long p = 0; p < k; ++p)
        s += double(ta ? a[size_t(p * lda + i)] : a[size_t(i * lda + p)]) *
             double(tb ? b[size_t(j * ldb + p)] : b[size_t(p * ldb + j)]);
      got.push_back(c[at]);
      want.push_back(double(alpha) * s + (beta == 0.0f ? 0.0 : double(beta) * double(c0[at])));
    }
  EXPECT_LE(rel_to_max(got, want), tol) << "ta " << ta << " tb " << tb << " m " << m << " n " << n << " k " << k
                                        << " pad " << pad << " beta " << beta;
}

TEST(CudaGemmSimt, EveryTransposeOddSizesFp32) {
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      check_simt<float, float>(ta, tb, 67, 70, 45, 0, 1.0f, 0.0f, 1e-5);
      check_simt<float, float>(ta, tb, 5, 3, 17, 3, 0.75f, 0.5f, 1e-5);
    }
}

TEST(CudaGemmSimt, Bf16InputsFp32AndBf16Outputs) {
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      check_simt<bf16, float>(ta, tb, 33, 65, 31, 1, -1.25f, 0.0f, 1e-5);  // bf16 products are exact in fp32
      check_simt<bf16, bf16>(ta, tb, 19, 7, 40, 2, 1.0f, 1.0f, 1e-2);      // output rounded to bf16
    }
}

TEST(CudaGemmSimt, EmptyAndKZero) {
  // k = 0: C = beta C (alpha times an empty sum).
  check_simt<float, float>(false, true, 9, 11, 0, 0, 1.0f, 0.5f, 1e-6);
  DeviceBuffer<float> x(4);
  gemm_simt<float, float>(false, false, 0, 3, 2, 1.0f, x.get(), 2, x.get(), 3, 0.0f, x.get(), 3);  // nothing to do
  EXPECT_THROW((gemm_simt<float, float>(false, false, 4, 4, 4, 1.0f, x.get(), 2, x.get(), 4, 0.0f, x.get(), 4)), Error);
}

}  // namespace
