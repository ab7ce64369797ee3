// embedding: row lookup for ids of any shape, scatter-add backward with repeated ids, f64
// gradient check, thread-count independence, and the error for an out-of-range id.
#include <gtest/gtest.h>
#include <omp.h>

#include "core/ops.h"
#include "tests/gradcheck.h"

using namespace moe;
using test::randn_f32;
using test::randn_f64;

TEST(Embedding, LooksUpRowsForAnyIdShape) {
  Tensor w = Tensor::arange(21, DType::f64).reshape({7, 3}).to(DType::f32);
  Tensor ids = Tensor::from_vector<int64_t>({6, 0, 2, 2, 5, 1}, {2, 3});
  Tensor y = embedding(w, ids);
  EXPECT_EQ(y.shape(), (Shape{2, 3, 3}));
  EXPECT_EQ(y.to_vector<float>(),
            (std::vector<float>{18, 19, 20, 0, 1, 2, 6, 7, 8, 6, 7, 8, 15, 16, 17, 3, 4, 5}));
  Tensor y32 = embedding(w, Tensor::from_vector<int32_t>({4}, {1}));
  EXPECT_EQ(y32.to_vector<float>(), (std::vector<float>{12, 13, 14}));
  EXPECT_EQ(embedding(w, Tensor::from_vector<int64_t>({3}, {})).shape(), (Shape{3}));  // 0-dim ids
}

TEST(Embedding, BackwardScatterAddsRepeatedIds) {
  Tensor w = randn_f64({5, 2}, 1, 1.0, true);
  Tensor ids = Tensor::from_vector<int64_t>({3, 1, 3, 3}, {4});
  Tensor g = Tensor::from_vector<double>({1, 2, 10, 20, 100, 200, 1000, 2000}, {4, 2});
  embedding(w, ids).backward(g);
  EXPECT_EQ(w.grad().to_vector<double>(), (std::vector<double>{0, 0, 10, 20, 0, 0, 1101, 2202, 0, 0}));
}

TEST(Embedding, GradcheckF64) {
  Tensor ids = Tensor::from_vector<int32_t>({0, 4, 6, 4, 4, 2, 1, 6, 3, 5}, {2, 5});
  EXPECT_GRADCHECK([ids](const std::vector<Tensor>& v) { return embedding(v[0], ids); }, {randn_f64({7, 3}, 2)}, 1e-6,
                   1e-9, 1e-6);
  EXPECT_GRADCHECK([ids](const std::vector<Tensor>& v) { return embedding(v[0].transpose(0, 1), ids); },
                   {randn_f64({5, 7}, 3)}, 1e-6, 1e-9, 1e-6);
}

TEST(Embedding, BackwardBitsIndependentOfThreadCount) {
  Tensor w = randn_f32({50, 300}, 4);
  std::vector<int64_t> v;
  for (int i = 0; i < 200; ++i) v.push_back((i * 37) % 50);
  Tensor ids = Tensor::from_vector<int64_t>(v, {200});
  Tensor g = randn_f32({200, 300}, 5);
  auto grad = [&](int threads) {
    int prev = omp_get_max_threads();
    omp_set_num_threads(threads);
    Tensor wg = w.clone();
    wg.set_requires_grad(true);
    embedding(wg, ids).backward(g);
    omp_set_num_threads(prev);
    return wg.grad().to_vector<float>();
  };
  EXPECT_EQ(grad(1), grad(2));
}

TEST(Embedding, OutOfRangeIdNamesIdAndVocab) {
  Tensor w = Tensor::zeros({50, 4});
  try {
    embedding(w, Tensor::from_vector<int64_t>({1, 57, 3}, {3}));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("embedding"), std::string::npos) << msg;
    EXPECT_NE(msg.find("id 57"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[0, 50)"), std::string::npos) << msg;
  }
  EXPECT_THROW(embedding(w, Tensor::from_vector<int32_t>({-1}, {1})), Error);
  EXPECT_THROW(embedding(w, Tensor::zeros({2})), Error);  // float ids
}
