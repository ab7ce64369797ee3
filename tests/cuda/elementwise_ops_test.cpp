// add / mul_scalar / swiglu on the device against the CPU ops, forward and backward, fp32 and
// bf16 activations; Module::to moving parameters in place.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "core/autograd.h"
#include "core/cpu/activation.h"
#include "core/cpu/elementwise.h"
#include "core/cuda/ops/cuda_backend.h"
#include "core/rng.h"
#include "layers/linear.h"
#include "tests/cuda/device_test_util.h"

namespace moe {
namespace {

class ElementwiseOps : public ::testing::Test {
 protected:
  void SetUp() override { cuda::install_backend("ElementwiseOps"); }
};

using test::random_host;

// max |a - b| / max(1, max |a|)
double rel_diff(const Tensor& a, const Tensor& b) {
  std::vector<double> x = a.to_double_vector(), y = b.to_double_vector();
  EXPECT_EQ(x.size(), y.size());
  double diff = 0, scale = 1;
  for (size_t i = 0; i < x.size(); ++i) diff = std::max(diff, std::abs(x[i] - y[i])), scale = std::max(scale, std::abs(x[i]));
  return diff / scale;
}

struct Case {
  DType act;
  double tol;
};

class ElementwiseOpsDtype : public ElementwiseOps, public ::testing::WithParamInterface<Case> {};

TEST_P(ElementwiseOpsDtype, AddMulScalarSwigluMatchTheCpu) {
  const Case c = GetParam();
  const Shape shape{3, 37};
  Tensor a = random_host(shape, 1), b = random_host(shape, 2), seed = random_host(shape, 3);
  // The CPU reference sees the device inputs' values (bf16-rounded when the activations are bf16).
  Tensor ha = a.to(c.act).to(DType::f32), hb = b.to(c.act).to(DType::f32);
  ha.set_requires_grad(true), hb.set_requires_grad(true);
  Tensor da = a.to(c.act).to(Device::cuda), db = b.to(c.act).to(Device::cuda);
  da.set_requires_grad(true), db.set_requires_grad(true);

  // backward() consumes the whole tape: each graph is built and run on its own.
  Tensor href = mul_scalar(add(swiglu(ha, hb), ha), -1.5);
  href.backward(seed);
  Tensor dout = mul_scalar(add(swiglu(da, db), da), -1.5);
  EXPECT_EQ(dout.device(), Device::cuda);
  EXPECT_EQ(dout.dtype(), c.act);
  EXPECT_LT(rel_diff(href, dout.to(DType::f32)), c.tol);
  dout.backward(seed.to(c.act).to(Device::cuda));
  ASSERT_TRUE(da.grad().defined() && db.grad().defined());
  EXPECT_EQ(da.grad().device(), Device::cuda);
  EXPECT_LT(rel_diff(ha.grad(), da.grad().to(DType::f32)), c.tol);
  EXPECT_LT(rel_diff(hb.grad(), db.grad().to(DType::f32)), c.tol);
}

INSTANTIATE_TEST_SUITE_P(Activations, ElementwiseOpsDtype,
                         ::testing::Values(Case{DType::f32, 1e-6}, Case{DType::bf16, 2e-2}),
                         [](const auto& info) { return std::string(dtype_name(info.param.act)); });

TEST_F(ElementwiseOps, ShapeAndDeviceMismatchesAreRefused) {
  Tensor a = Tensor::zeros({2, 3}, DType::f32, Device::cuda), b = Tensor::zeros({3}, DType::f32, Device::cuda);
  EXPECT_THROW(add(a, b), Error);                        // no broadcasting on the device
  EXPECT_THROW(add(a, Tensor::zeros({2, 3})), Error);    // mixed devices
  EXPECT_THROW(add(a, Tensor::zeros({2, 3}, DType::f64, Device::cuda)), Error);  // f64 on the device
}

// The residual add of an fp32 stream and a bf16 sublayer output: fp32, either order, grads in
// each input's own dtype.
TEST_F(ElementwiseOps, AddOfFp32AndBf16SumsInFp32) {
  Tensor a = random_host({3, 5}, 8), b = random_host({3, 5}, 9).to(DType::bf16);
  Tensor da = a.to(Device::cuda), db = b.to(Device::cuda);
  da.set_requires_grad(true), db.set_requires_grad(true);
  Tensor y = add(db, da);
  EXPECT_EQ(y.dtype(), DType::f32);
  std::vector<float> av = a.to_vector<float>(), bv = b.to(DType::f32).to_vector<float>(), yv = y.to_vector<float>();
  for (size_t i = 0; i < yv.size(); ++i) EXPECT_EQ(yv[i], av[i] + bv[i]);
  y.backward(Tensor::ones({3, 5}, DType::f32, Device::cuda));
  EXPECT_EQ(da.grad().dtype(), DType::f32);
  EXPECT_EQ(db.grad().dtype(), DType::bf16);
}

TEST_F(ElementwiseOps, ModuleToMovesParametersInPlace) {
  Philox rng(7, 0);
  Linear lin(5, 3, true, rng, 0.5, DType::f32);
  const std::vector<float> before = lin.weight().to_vector<float>();
  Tensor held = lin.weight();  // another holder of the same parameter
  lin.to(Device::cuda);
  EXPECT_EQ(lin.device(), Device::cuda);
  EXPECT_EQ(held.device(), Device::cuda);
  EXPECT_TRUE(held.requires_grad());
  EXPECT_EQ(held.to_vector<float>(), before);
  lin.to(Device::cpu);
  EXPECT_EQ(held.device(), Device::cpu);
  EXPECT_EQ(held.to_vector<float>(), before);
}

}  // namespace
}  // namespace moe
