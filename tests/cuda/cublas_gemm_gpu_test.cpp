// cuBLAS dense GEMM (GPU only: built into moetrain_cuda_gpu_tests, never the emulation, which
// does not emulate cuBLAS): every transpose combination against double loops, bf16 and fp32.
#include <gtest/gtest.h>

#include "core/cuda/cublas_gemm.h"
#include "core/cuda/memory.h"
#include "core/error.h"
#include "tests/cuda/kernel_test_util.h"

using namespace moe;
using namespace moe::cuda;
using namespace moe::test;

namespace {

template <class Tin, class Tout>
void check_gemm(bool ta, bool tb, long m, long n, long k, double atol, double rtol) {
  auto a = round_bf16(random_normal(static_cast<size_t>(m * k), 201)),
       b = round_bf16(random_normal(static_cast<size_t>(k * n), 202));
  auto c0 = round_bf16(random_normal(static_cast<size_t>(m * n), 203));
  const long lda = ta ? m : k, ldb = tb ? k : n;
  DeviceBuffer<Tin> da = upload<Tin>(a), db = upload<Tin>(b);
  DeviceBuffer<Tout> dc = upload<Tout>(c0);
  gemm<Tin, Tout>(default_blas_handle(), ta, tb, m, n, k, 0.5f, da.get(), lda, db.get(), ldb, 2.0f, dc.get(), n);
  std::vector<double> want(static_cast<size_t>(m * n));
  for (long i = 0; i < m; ++i)
    for (long j = 0; j < n; ++j) {
      double s = 0;
      for (long p = 0; p < k; ++p)
        s += double(ta ? a[p * lda + i] : a[i * lda + p]) * (tb ? b[j * ldb + p] : b[p * ldb + j]);
      want[static_cast<size_t>(i * n + j)] = 0.5 * s + 2.0 * c0[static_cast<size_t>(i * n + j)];
    }
  EXPECT_TRUE(all_near(to_f32(dc.to_host()), want, atol, rtol)) << "ta " << ta << " tb " << tb;
}

TEST(CudaCublas, GemmEveryTransposeBf16AndFp32) {
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      check_gemm<bf16, float>(ta, tb, 67, 45, 129, 1e-3, 1e-4);  // bf16 products are exact in fp32
      check_gemm<float, float>(ta, tb, 33, 70, 41, 1e-4, 1e-5);
    }
  check_gemm<bf16, bf16>(false, true, 19, 77, 64, 3e-2, 1e-2);  // output rounded to bf16
}

TEST(CudaCublas, BadShapeNamesTheCall) {
  DeviceBuffer<float> x(16);
  EXPECT_THROW((gemm<float, float>(default_blas_handle(), false, false, 4, 4, 4, 1.0f, x.get(), 2, x.get(), 4, 0.0f,
                                   x.get(), 4)),
               Error);
}

}  // namespace
