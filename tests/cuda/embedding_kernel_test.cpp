// Embedding kernels against core/cpu embedding and its autograd backward: fp32 bit-exact (same
// summation order), bf16 within rounding, a vocabulary that needs two radix passes, hot ids, one
// run as long as the batch.
#include <gtest/gtest.h>

#include <random>

#include "core/cuda/embedding.h"
#include "core/cuda/memory.h"
#include "core/error.h"
#include "core/ops.h"
#include "tests/cuda/kernel_test_util.h"

using namespace moe;
using namespace moe::cuda;
using namespace moe::test;

namespace {

std::vector<int64_t> random_ids(long n, long vocab, unsigned seed) {
  std::mt19937 gen(uint32_t(test_seed(seed)));
  std::vector<int64_t> ids(static_cast<size_t>(n));
  for (auto& id : ids) id = int64_t(gen() % uint32_t(vocab));
  for (long i = 0; i < n; i += 3) ids[static_cast<size_t>(i)] = 7;  // a hot id: a long run in the sorted order
  ids[static_cast<size_t>(n - 1)] = vocab - 1;
  return ids;
}

TEST(CudaEmbedding, MatchesCpuOpF32BitExact) {
  const long n = 157, vocab = 517, dim = 21;  // vocab > 256: two digit passes of the sort
  auto w = random_normal(static_cast<size_t>(vocab * dim), 61);
  auto dy = random_normal(static_cast<size_t>(n * dim), 62);
  auto ids = random_ids(n, vocab, 63);
  Tensor tw = Tensor::from_vector<float>(w, {vocab, dim});
  tw.set_requires_grad(true);
  Tensor out = embedding(tw, Tensor::from_vector<int64_t>(ids, {n}));
  out.backward(Tensor::from_vector<float>(dy, {n, dim}));

  DeviceBuffer<float> dw_in(w), ddy(dy), dout(static_cast<size_t>(n * dim)), dgrad(static_cast<size_t>(vocab * dim));
  DeviceBuffer<int64_t> dids(ids);
  embedding_forward(dw_in.get(), dids.get(), dout.get(), n, vocab, dim);
  embedding_backward(ddy.get(), dids.get(), dgrad.get(), n, vocab, dim);
  EXPECT_EQ(dout.to_host(), out.to_vector<float>());
  EXPECT_EQ(dgrad.to_host(), tw.grad().to_vector<float>()) << "same additions in the same order";
}

// Every position one id: a single run the backward walks in batches of 64, ending exactly at a
// batch's end (64, 128), one past it (65) and with out-of-range ids (dropped by the sort) at the
// end (70: 68 valid).
TEST(CudaEmbedding, OneIdEverywhereIsOneRunAcrossBatchesF32BitExact) {
  for (const long n : {64L, 65L, 70L, 128L}) {
    const long vocab = 9, dim = 5;
    std::vector<int64_t> ids(static_cast<size_t>(n), 4);
    if (n == 70) ids[69] = ids[68] = -1;  // skipped by the backward as by the forward's check
    auto dy = random_normal(static_cast<size_t>(n * dim), 68 + unsigned(n));
    std::vector<float> want(static_cast<size_t>(vocab * dim), 0.0f);
    for (long i = 0; i < n; ++i)
      if (ids[static_cast<size_t>(i)] >= 0)
        for (long d = 0; d < dim; ++d) want[static_cast<size_t>(4 * dim + d)] += dy[static_cast<size_t>(i * dim + d)];
    DeviceBuffer<float> ddy(dy), dgrad(static_cast<size_t>(vocab * dim));
    DeviceBuffer<int64_t> dids(ids);
    embedding_backward(ddy.get(), dids.get(), dgrad.get(), n, vocab, dim);
    EXPECT_EQ(dgrad.to_host(), want) << "n " << n << ": the positions' rows added in order";
  }
}

TEST(CudaEmbedding, Bf16StorageFp32Gradient) {
  const long n = 77, vocab = 45, dim = 19;
  auto w = round_bf16(random_normal(static_cast<size_t>(vocab * dim), 64));
  auto dy = round_bf16(random_normal(static_cast<size_t>(n * dim), 65));
  auto ids = random_ids(n, vocab, 66);
  DeviceBuffer<bf16> dw_in = upload<bf16>(w), ddy = upload<bf16>(dy), dout(static_cast<size_t>(n * dim));
  DeviceBuffer<float> dgrad(static_cast<size_t>(vocab * dim));
  DeviceBuffer<int64_t> dids(ids);
  embedding_forward(dw_in.get(), dids.get(), dout.get(), n, vocab, dim);
  embedding_backward(ddy.get(), dids.get(), dgrad.get(), n, vocab, dim);
  std::vector<double> want_out(static_cast<size_t>(n * dim)), want_grad(static_cast<size_t>(vocab * dim), 0.0);
  for (long i = 0; i < n; ++i)
    for (long d = 0; d < dim; ++d) {
      want_out[static_cast<size_t>(i * dim + d)] = w[static_cast<size_t>(ids[static_cast<size_t>(i)] * dim + d)];
      want_grad[static_cast<size_t>(ids[static_cast<size_t>(i)] * dim + d)] += dy[static_cast<size_t>(i * dim + d)];
    }
  EXPECT_TRUE(all_near(to_f32(dout.to_host()), want_out, 0, 0)) << "a copy of bf16 rows is exact";
  EXPECT_TRUE(all_near(dgrad.to_host(), want_grad, 1e-5, 1e-5)) << "fp32 sums of bf16 values";
}

TEST(CudaEmbedding, OutOfRangeIdIsAnErrorNamingThePosition) {
  const long vocab = 10, dim = 3;
  DeviceBuffer<float> w(random_normal(static_cast<size_t>(vocab * dim), 67)), out(static_cast<size_t>(5 * dim)),
      grad(static_cast<size_t>(vocab * dim));
  DeviceBuffer<int64_t> ids(std::vector<int64_t>{1, 2, 10, 3, -4});
  try {
    embedding_forward(w.get(), ids.get(), out.get(), 5, vocab, dim);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("id 10 at position 2"), std::string::npos) << e.what();
  }
  // The backward skips such ids: rows 1, 2, 3 get their one gradient row, the rest stay zero.
  DeviceBuffer<float> dy(std::vector<float>(static_cast<size_t>(5 * dim), 1.0f));
  embedding_backward(dy.get(), ids.get(), grad.get(), 5, vocab, dim);
  auto g = grad.to_host();
  for (long v = 0; v < vocab; ++v)
    EXPECT_EQ(g[static_cast<size_t>(v * dim)], (v >= 1 && v <= 3) ? 1.0f : 0.0f) << "row " << v;
}

}  // namespace
