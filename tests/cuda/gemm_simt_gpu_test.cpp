// The SIMT GEMM against cuBLAS on a GPU (GPU binary only: the emulation has no cuBLAS), on sizes
// that are not tile multiples, every transpose pair, the three operand / output type pairs.
#include <gtest/gtest.h>

#include <cmath>

#include "core/cuda/cublas_gemm.h"
#include "core/cuda/gemm_simt.h"
#include "core/cuda/memory.h"
#include "tests/cuda/kernel_test_util.h"

using namespace moe;
using namespace moe::cuda;
using namespace moe::test;

namespace {

template <class Tin, class Tout>
void against_cublas(bool ta, bool tb, long m, long n, long k, double tol) {
  const long lda = ta ? m : k, ldb = tb ? k : n;
  auto a = random_normal(size_t(m * k), 301), b = random_normal(size_t(k * n), 302),
       c0 = random_normal(size_t(m * n), 303);
  DeviceBuffer<Tin> da = upload<Tin>(a), db = upload<Tin>(b);
  DeviceBuffer<Tout> c_simt = upload<Tout>(c0), c_blas = upload<Tout>(c0);
  gemm_simt<Tin, Tout>(ta, tb, m, n, k, 0.5f, da.get(), lda, db.get(), ldb, 1.5f, c_simt.get(), n);
  gemm<Tin, Tout>(default_blas_handle(), ta, tb, m, n, k, 0.5f, da.get(), lda, db.get(), ldb, 1.5f, c_blas.get(), n);
  const std::vector<float> got = to_f32(c_simt.to_host()), want = to_f32(c_blas.to_host());
  double err = 0, scale = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    err = std::max(err, std::abs(double(got[i]) - double(want[i])));
    scale = std::max(scale, std::abs(double(want[i])));
  }
  EXPECT_LE(err / scale, tol) << "ta " << ta << " tb " << tb << " m " << m << " n " << n << " k " << k;
}

TEST(CudaGemmSimtGpu, MatchesCublas) {
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      against_cublas<float, float>(ta, tb, 301, 257, 199, 1e-5);  // cuBLAS may use TF32 only if asked: it is not
      against_cublas<bf16, float>(ta, tb, 130, 515, 96, 1e-5);
      against_cublas<bf16, bf16>(ta, tb, 77, 64, 1031, 1e-2);
    }
}

}  // namespace
