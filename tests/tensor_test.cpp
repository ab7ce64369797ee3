// Tensor core: views, copies, dtypes, bf16 rounding, the pooled allocator, Philox, autograd tape.
#include <gtest/gtest.h>
#include <malloc.h>

#include <cmath>
#include <cstdlib>
#include <set>

#include "core/allocator.h"
#include "core/ops.h"
#include "core/rng.h"
#include "tests/env_scope.h"
#include "tests/gradcheck.h"

using namespace moe;

TEST(Tensor, ViewsShareStorageAndIndexCorrectly) {
  Tensor t = Tensor::arange(24, DType::f32).reshape({2, 3, 4});
  EXPECT_EQ(t.shape(), (Shape{2, 3, 4}));
  Tensor tr = t.transpose(0, 2);  // [4, 3, 2]
  EXPECT_FALSE(tr.is_contiguous());
  EXPECT_TRUE(tr.same_storage(t));
  auto v = tr.contiguous().to_vector<float>();
  // tr[i][j][k] = t[k][j][i] = k*12 + j*4 + i
  EXPECT_EQ(v[size_t(1 * 6 + 2 * 2 + 1)], float(1 * 12 + 2 * 4 + 1));
  Tensor s = t.slice(2, 1, 3);  // [2, 3, 2]
  EXPECT_EQ(s.to_vector<float>(), (std::vector<float>{1, 2, 5, 6, 9, 10, 13, 14, 17, 18, 21, 22}));
  EXPECT_EQ(t.select(1, 2).to_vector<float>(), (std::vector<float>{8, 9, 10, 11, 20, 21, 22, 23}));
  EXPECT_EQ(t.reshape({-1, 4}).shape(), (Shape{6, 4}));
  // Transposing outer dims keeps rows contiguous (the row-copy path of copy_).
  auto u = t.transpose(0, 1).contiguous().to_vector<float>();  // [3, 2, 4]
  for (int64_t j = 0; j < 3; ++j)
    for (int64_t i = 0; i < 2; ++i)
      for (int64_t k = 0; k < 4; ++k) EXPECT_EQ(u[size_t((j * 2 + i) * 4 + k)], float(i * 12 + j * 4 + k));
  Tensor dst = Tensor::zeros({3, 2, 4});
  dst.transpose(0, 1).copy_(t);  // strided destination, contiguous rows
  EXPECT_EQ(dst.to_vector<float>(), u);
}

TEST(Tensor, BadShapesNameTheOpAndShapes) {
  Tensor a = Tensor::zeros({2, 3});
  try {
    a.reshape({4, 2});
    FAIL() << "reshape did not throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("reshape"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("[2, 3]"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("[4, 2]"), std::string::npos);
  }
  EXPECT_THROW(a.slice(1, 2, 5), Error);
  EXPECT_THROW(a.data<double>(), Error);
  try {
    add(Tensor::zeros({2, 3}), Tensor::zeros({4, 3}));
    FAIL() << "add did not throw";
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("add"), std::string::npos);
    EXPECT_NE(m.find("[2, 3]"), std::string::npos);
    EXPECT_NE(m.find("[4, 3]"), std::string::npos);
  }
  EXPECT_THROW(add(Tensor::zeros({2}), Tensor::zeros({2}, DType::f64)), Error);
  EXPECT_THROW(add(Tensor::zeros({2}, DType::i32), Tensor::zeros({2}, DType::i32)), Error);
}

TEST(Tensor, Bf16RoundsToNearestEven) {
  EXPECT_EQ(float_to_bf16(1.0f).bits, 0x3f80);
  // 1 + 2^-8 is exactly half-way between two bf16 values: ties to even (down to 1.0).
  EXPECT_EQ(float_to_bf16(1.0f + 1.0f / 256).bits, 0x3f80);
  // 1 + 3 * 2^-8 is half-way and rounds up to the even neighbour 1 + 2^-6.
  EXPECT_EQ(bf16_to_float(float_to_bf16(1.0f + 3.0f / 256)), 1.0f + 1.0f / 64);
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(NAN))));
  Tensor x = Tensor::from_vector<float>({0.1f, -3.5f, 1000.25f}, {3});
  auto back = x.to(DType::bf16).to(DType::f32).to_vector<float>();
  for (size_t i = 0; i < 3; ++i) EXPECT_NEAR(back[i], x.to_vector<float>()[i], std::abs(x.to_vector<float>()[i]) / 128);
}

TEST(Allocator, ReusesFreedBlocks) {
  auto before = host_pool_stats();
  { Tensor a = Tensor::empty({1000}); }
  { Tensor b = Tensor::empty({1000}); }
  auto after = host_pool_stats();
  EXPECT_EQ(after.allocations - before.allocations, 2u);
  EXPECT_GE(after.pool_hits - before.pool_hits, 1u);
  Tensor c = Tensor::empty({17});
  EXPECT_EQ(reinterpret_cast<uintptr_t>(c.raw_data()) % kHostAlignment, 0u);
}

TEST(Allocator, TuneHostMallocTakesTunedOrDefaultAndRefusesOthers) {
  {
    test::EnvScope env("MOE_HOST_MALLOC", "default");
    EXPECT_NO_THROW(tune_host_malloc());
  }
  {
    test::EnvScope env("MOE_HOST_MALLOC", "fast");
    try {
      tune_host_malloc();
      FAIL() << "an unknown MOE_HOST_MALLOC must be refused";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("MOE_HOST_MALLOC"), std::string::npos) << e.what();
    }
  }
  test::EnvScope env("MOE_HOST_MALLOC", nullptr);
  EXPECT_NO_THROW(tune_host_malloc());
  // Tuned, a 1 MiB block comes from the heap: glibc's default (128 KiB threshold) maps it.
  const size_t mapped = mallinfo2().hblks;
  void* block = std::malloc(size_t(1) << 20);
  ASSERT_NE(block, nullptr);
  EXPECT_EQ(mallinfo2().hblks, mapped) << "a 1 MiB block was mapped: tune_host_malloc did not raise the threshold";
  std::free(block);
}

TEST(Philox, ReproducibleFromOffsetAndDistinctAcrossStreams) {
  Philox a(42, 7);
  std::vector<uint32_t> first;
  for (int i = 0; i < 10; ++i) first.push_back(a.next_u32());
  Philox b(42, 7, 5);  // resume at offset 5
  for (int i = 5; i < 10; ++i) EXPECT_EQ(b.next_u32(), first[size_t(i)]);
  Philox c(42, 8);
  EXPECT_NE(c.next_u32(), first[0]);
  // Uniforms are in [0, 1) and their mean is near 1/2.
  Philox u(1, 1);
  double s = 0;
  for (int i = 0; i < 20000; ++i) {
    double v = u.uniform();
    ASSERT_GE(v, 0.0);
    ASSERT_LT(v, 1.0);
    s += v;
  }
  EXPECT_NEAR(s / 20000, 0.5, 0.01);
  // Known-answer test: Random123's philox4x32-10 vector for counter=0, key=0.
  auto kat = philox4x32(0, 0, 0);
  EXPECT_EQ(kat[0], 0x6627e8d5u);
  EXPECT_EQ(kat[1], 0xe169c58du);
  EXPECT_EQ(kat[2], 0xbc57ac4cu);
  EXPECT_EQ(kat[3], 0x9b00dbd8u);
}

TEST(Autograd, TapeRecordsOnlyWhenNeededAndClearsAfterBackward) {
  clear_tape();
  Tensor x = test::randn_f64({3}, 1);
  Tensor c = test::randn_f64({3}, 2, 1.0, false);
  {
    NoGradGuard ng;
    Tensor y = mul(x, c);
    EXPECT_FALSE(y.requires_grad());
    EXPECT_EQ(tape_size(), 0u);
  }
  Tensor y = sum_all(mul(x, c));
  EXPECT_GT(tape_size(), 0u);
  y.backward();
  EXPECT_EQ(tape_size(), 0u);
  EXPECT_EQ(x.grad().to_vector<double>(), c.to_vector<double>());
  // A second backward accumulates.
  sum_all(mul(x, c)).backward();
  auto g = x.grad().to_vector<double>();
  for (size_t i = 0; i < 3; ++i) EXPECT_DOUBLE_EQ(g[i], 2 * c.to_vector<double>()[i]);
}

TEST(Autograd, ViewsAreDifferentiable) {
  Tensor x = test::randn_f64({3, 4}, 3);
  EXPECT_GRADCHECK([](const std::vector<Tensor>& in) {
    Tensor t = in[0].transpose(0, 1);                 // [4, 3]
    Tensor s = t.slice(0, 1, 3).contiguous();          // [2, 3]
    return mul(s.reshape({3, 2}), s.reshape({3, 2}));
  }, {x});
  EXPECT_GRADCHECK([](const std::vector<Tensor>& in) { return in[0].select(1, 2).unsqueeze(0); }, {x});
  EXPECT_GRADCHECK([](const std::vector<Tensor>& in) { return in[0].to(DType::f32).to(DType::f64); }, {x}, 1e-3,
                   1e-5, 1e-4);
}
