// Tensors on Device::cuda through the installed backend: copies both ways, views, dtype
// conversions, fills, the host-access guard, and grads across Tensor::to(Device).
#include <gtest/gtest.h>

#include "core/autograd.h"
#include "core/cuda/ops/cuda_backend.h"
#include "core/rng.h"
#include "tests/cuda/device_test_util.h"

namespace moe {
namespace {

class TensorDevice : public ::testing::Test {
 protected:
  void SetUp() override { cuda::install_backend("TensorDevice"); }
};

using test::random_host;

TEST_F(TensorDevice, RoundTripKeepsEveryBit) {
  Tensor h = random_host({7, 13}, 1);
  Tensor d = h.to(Device::cuda);
  EXPECT_EQ(d.device(), Device::cuda);
  EXPECT_EQ(d.shape(), h.shape());
  EXPECT_EQ(d.to(Device::cpu).to_vector<float>(), h.to_vector<float>());
  EXPECT_EQ(d.to_vector<float>(), h.to_vector<float>());  // to_vector copies to the host itself
}

TEST_F(TensorDevice, HostAccessToDeviceDataThrows) {
  Tensor d = Tensor::zeros({3}, DType::f32, Device::cuda);
  try {
    (void)d.data<float>();
    FAIL() << "expected a throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("is on the cuda device"), std::string::npos) << e.what();
  }
  EXPECT_NE(d.device_data<float>(), nullptr);
}

TEST_F(TensorDevice, StridedViewsCopyOnTheDevice) {
  Tensor h = random_host({5, 6, 7}, 2);
  Tensor d = h.to(Device::cuda);
  Tensor ht = h.transpose(0, 2).slice(1, 1, 5).contiguous();
  Tensor dt = d.transpose(0, 2).slice(1, 1, 5).contiguous();  // strided copy kernel
  EXPECT_EQ(dt.device(), Device::cuda);
  EXPECT_EQ(dt.to_vector<float>(), ht.to_vector<float>());
  // device view -> host, host view -> device view
  EXPECT_EQ(d.transpose(0, 1).to(Device::cpu).to_vector<float>(), h.transpose(0, 1).contiguous().to_vector<float>());
  Tensor z = Tensor::zeros({7, 6, 5}, DType::f32, Device::cuda);
  z.transpose(0, 2).copy_(h);
  EXPECT_EQ(z.to_vector<float>(), h.transpose(0, 2).contiguous().to_vector<float>());
}

// copy.cu merges the dims both views step over as one: a view whose inner dims merge but whose
// outer dim does not (a slice), extents of 1 in the middle, and a cast into a transposed view.
TEST_F(TensorDevice, ViewsThatMergeAndViewsThatDoNot) {
  Tensor h = random_host({4, 1, 6, 5}, 5);
  Tensor d = h.to(Device::cuda);
  EXPECT_EQ(d.slice(2, 1, 4).contiguous().to_vector<float>(), h.slice(2, 1, 4).contiguous().to_vector<float>());
  EXPECT_EQ(d.slice(3, 0, 4).to(DType::bf16).to(Device::cpu).to_double_vector(),
            h.slice(3, 0, 4).contiguous().to(DType::bf16).to_double_vector());
  Tensor z = Tensor::zeros({5, 6, 1, 4}, DType::bf16, Device::cuda);
  z.transpose(0, 3).transpose(1, 2).copy_(h);  // f32 -> bf16 into a view none of whose dims merge
  EXPECT_EQ(z.to(Device::cpu).to_double_vector(), h.transpose(0, 3).transpose(1, 2).contiguous().to(DType::bf16).to_double_vector());
  Tensor big = random_host({1001, 3}, 6);  // one merged dim over many blocks
  EXPECT_EQ(big.to(Device::cuda).to(DType::bf16).to(Device::cpu).to_double_vector(),
            big.to(DType::bf16).to_double_vector());
}

TEST_F(TensorDevice, DtypeConversionsMatchTheHost) {
  Tensor h = random_host({33}, 3);
  Tensor d = h.to(Device::cuda);
  for (DType dt : {DType::bf16, DType::f64}) {
    Tensor hd = h.to(dt), dd = d.to(dt);
    EXPECT_EQ(dd.device(), Device::cuda);
    EXPECT_EQ(dd.to(Device::cpu).to_double_vector(), hd.to_double_vector()) << dtype_name(dt);
  }
  Tensor ids = Tensor::from_vector(std::vector<int64_t>{0, 5, -3, 1ll << 40}, {4});
  EXPECT_EQ(ids.to(Device::cuda).to(DType::i64).to_vector<int64_t>(), ids.to_vector<int64_t>());
  EXPECT_EQ(ids.slice(0, 0, 3).to(Device::cuda).to(DType::i32).to(Device::cpu).to_vector<int32_t>(),
            (std::vector<int32_t>{0, 5, -3}));
  EXPECT_THROW(ids.to(Device::cuda).to(DType::f32), Error);  // index -> floating is refused
}

TEST_F(TensorDevice, FillAndZerosOnViews) {
  Tensor d = Tensor::full({4, 5}, 2.5, DType::bf16, Device::cuda);
  d.slice(1, 1, 3).fill_(-1.0);
  std::vector<double> got = d.to_double_vector();
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < 5; ++c) EXPECT_EQ(got[size_t(r * 5 + c)], (c == 1 || c == 2) ? -1.0 : 2.5);
  EXPECT_EQ(Tensor::zeros({3}, DType::i32, Device::cuda).to_vector<int32_t>(), (std::vector<int32_t>{0, 0, 0}));
  EXPECT_DOUBLE_EQ(Tensor::scalar(4.0).to(Device::cuda).item_double(), 4.0);
}

TEST_F(TensorDevice, GradFlowsBackAcrossTheCopy) {
  Tensor h = random_host({3, 4}, 4);
  h.set_requires_grad(true);
  Tensor d = h.to(Device::cuda);
  Tensor back = d.slice(0, 1, 3).to(Device::cpu);  // the slice's backward zero-fills on the device
  Tensor seed = random_host({2, 4}, 5);
  back.backward(seed);
  ASSERT_TRUE(h.grad().defined());
  EXPECT_EQ(h.grad().device(), Device::cpu);
  std::vector<float> g = h.grad().to_vector<float>(), s = seed.to_vector<float>();
  for (int i = 0; i < 4; ++i) EXPECT_EQ(g[size_t(i)], 0.0f);
  for (int i = 0; i < 8; ++i) EXPECT_EQ(g[size_t(4 + i)], s[size_t(i)]);
}

TEST_F(TensorDevice, MixedDeviceOpsAreRefusedByName) {
  Tensor a = Tensor::zeros({2}, DType::f32, Device::cuda), b = Tensor::zeros({2});
  b.set_name("host_b");
  try {
    common_device("add", {a, b});
    FAIL() << "expected a throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'host_b'"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace moe
