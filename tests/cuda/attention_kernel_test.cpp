// Flash attention kernels against core/cpu causal_attention in double (forward and its autograd
// backward), fp32 and bf16 storage, on sequence lengths that are not multiples of the tiles.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "core/cuda/attention.h"
#include "core/cuda/device_sm.h"
#include "core/cuda/memory.h"
#include "core/error.h"
#include "core/ops.h"
#include "tests/cuda/kernel_test_util.h"
#include "tests/env_scope.h"

using namespace moe;
using namespace moe::cuda;
using namespace moe::test;

namespace {

struct Reference {
  std::vector<double> out, lse, dq, dk, dv;
};

// The CPU op in f64 on the same (rounded) inputs; lse from a direct double loop.
Reference cpu_reference(const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
                        const std::vector<float>& dout, long B, long H, long S, long D) {
  auto tensor = [&](const std::vector<float>& x) {
    std::vector<double> d(x.begin(), x.end());
    return Tensor::from_vector<double>(d, {B, H, S, D});
  };
  Tensor tq = tensor(q), tk = tensor(k), tv = tensor(v);
  tq.set_requires_grad(true), tk.set_requires_grad(true), tv.set_requires_grad(true);
  Tensor out = causal_attention(tq, tk, tv);
  out.backward(tensor(dout));
  Reference r{out.to_double_vector(),
              {},
              tq.grad().to_double_vector(),
              tk.grad().to_double_vector(),
              tv.grad().to_double_vector()};
  const double scale = 1.0 / std::sqrt(double(D));
  for (long h = 0; h < B * H; ++h)
    for (long i = 0; i < S; ++i) {
      std::vector<double> s(static_cast<size_t>(i + 1));
      double m = -INFINITY, sum = 0;
      for (long j = 0; j <= i; ++j) {
        double dot = 0;
        for (long d = 0; d < D; ++d) dot += double(q[(h * S + i) * D + d]) * k[(h * S + j) * D + d];
        s[static_cast<size_t>(j)] = dot * scale;
        m = std::max(m, s[static_cast<size_t>(j)]);
      }
      for (double x : s) sum += std::exp(x - m);
      r.lse.push_back(m + std::log(sum));
    }
  return r;
}

// [B, H, S, D] <-> [B, S, H, D] (an involution up to swapping H and S in the arguments).
std::vector<float> swap_heads_and_seq(const std::vector<float>& x, long B, long H, long S, long D) {
  std::vector<float> y(x.size());
  for (long b = 0; b < B; ++b)
    for (long h = 0; h < H; ++h)
      for (long s = 0; s < S; ++s)
        for (long d = 0; d < D; ++d)
          y[static_cast<size_t>(((b * S + s) * H + h) * D + d)] = x[static_cast<size_t>(((b * H + h) * S + s) * D + d)];
  return y;
}

// Tolerances: fp32 storage against the double reference (sums of S terms of size ~1 in fp32);
// bf16 storage: outputs rounded to 8 mantissa bits, and the backward reads the bf16 out.
template <class T>
void check_attention(long B, long H, long S, int D, unsigned seed, double atol, double rtol,
                     AttentionLayout layout = AttentionLayout::kBHSD) {
  const size_t n = static_cast<size_t>(B * H * S * D);
  auto q = round_bf16(random_normal(n, seed, 1.5f)), k = round_bf16(random_normal(n, seed + 1, 1.5f));
  auto v = round_bf16(random_normal(n, seed + 2)), dout = round_bf16(random_normal(n, seed + 3));
  Reference want = cpu_reference(q, k, v, dout, B, H, S, D);

  const bool bshd = layout == AttentionLayout::kBSHD;
  auto to_layout = [&](const std::vector<float>& x) { return bshd ? swap_heads_and_seq(x, B, H, S, D) : x; };
  auto from_layout = [&](const std::vector<float>& x) { return bshd ? swap_heads_and_seq(x, B, S, H, D) : x; };
  DeviceBuffer<T> dq_in = upload<T>(to_layout(q)), dk_in = upload<T>(to_layout(k)), dv_in = upload<T>(to_layout(v)),
                  ddout = upload<T>(to_layout(dout)), out(n), dq(n), dk(n), dv(n);
  DeviceBuffer<float> lse(static_cast<size_t>(B * H * S));
  flash_attention_forward(dq_in.get(), dk_in.get(), dv_in.get(), out.get(), lse.get(), B, H, S, D, layout);
  flash_attention_backward(dq_in.get(), dk_in.get(), dv_in.get(), out.get(), lse.get(), ddout.get(), dq.get(), dk.get(),
                           dv.get(), B, H, S, D, layout);
  const std::string where = "B=" + std::to_string(B) + " H=" + std::to_string(H) + " S=" + std::to_string(S) +
                            " D=" + std::to_string(D) + (bshd ? " [B, S, H, D]" : " [B, H, S, D]");
  EXPECT_TRUE(all_near(from_layout(to_f32(out.to_host())), want.out, atol, rtol)) << "out " << where;
  EXPECT_TRUE(all_near(lse.to_host(), want.lse, 1e-5, 1e-5)) << "lse (fp32 always) " << where;
  // A bf16 grad entry sums up to S terms rounded to bf16 (P, dS, and the bf16 out in delta =
  // rowsum(dO O)), so its error scales with the tensor's largest entries, not with the entry
  // itself: there atol is relative to max(1, max |want|). (A numpy model of these roundings put
  // the error at up to 1% of that max over 300 draws; per entry, atol 2e-2 failed 1 draw in 100.)
  auto grad_atol = [&](const std::vector<double>& w) {
    if (!std::is_same_v<T, bf16>) return atol;
    double top = 1.0;
    for (double x : w) top = std::max(top, std::abs(x));
    return atol * top;
  };
  EXPECT_TRUE(all_near(from_layout(to_f32(dq.to_host())), want.dq, grad_atol(want.dq), rtol)) << "dq " << where;
  EXPECT_TRUE(all_near(from_layout(to_f32(dk.to_host())), want.dk, grad_atol(want.dk), rtol)) << "dk " << where;
  EXPECT_TRUE(all_near(from_layout(to_f32(dv.to_host())), want.dv, grad_atol(want.dv), rtol)) << "dv " << where;
}

TEST(CudaFlashAttention, MatchesCpuOpF32) {
  // S: below one key tile, across the 16-row and 32-key tiles; D = 24, 40, 64 and the maximum.
  check_attention<float>(1, 2, 45, 24, 101, 2e-5, 1e-4);
  check_attention<float>(2, 1, 37, 40, 102, 2e-5, 1e-4);
  check_attention<float>(1, 1, 70, 64, 103, 2e-5, 1e-4);
  check_attention<float>(1, 1, 7, 128, 104, 2e-5, 1e-4);
}

TEST(CudaFlashAttention, SequenceMajorLayoutF32) {
  check_attention<float>(2, 3, 21, 24, 107, 2e-5, 1e-4, AttentionLayout::kBSHD);
}

// bf16 runs on tensor cores (64-key tiles; forward row tiles of 128 rows up to padded head dim
// 64, of 64 rows above; backward 64-key and 64-row tiles; head dim padded to 16s): one tile,
// several row and key tiles (the online rescale across tiles), head dims 16, 20 (not a multiple of 8: no vector loads, odd pairs at the
// edge), 24, 40 (padded to 48), 64 and the largest, both layouts, several batches and heads.
TEST(CudaFlashAttention, MatchesCpuOpBf16) {
  check_attention<bf16>(1, 2, 45, 24, 105, 2e-2, 2e-2);
  check_attention<bf16>(1, 1, 51, 64, 106, 2e-2, 2e-2);
  check_attention<bf16>(2, 3, 37, 16, 110, 2e-2, 2e-2);
  check_attention<bf16>(1, 2, 33, 20, 111, 2e-2, 2e-2, AttentionLayout::kBSHD);
}

TEST(CudaFlashAttention, Bf16AcrossTilesAndAtTheLargestHeadDim) {
  check_attention<bf16>(1, 1, 150, 40, 108, 2e-2, 2e-2);  // two 128-row forward tiles
  check_attention<bf16>(2, 2, 19, 128, 109, 2e-2, 2e-2, AttentionLayout::kBSHD);
  check_attention<bf16>(1, 1, 70, 128, 112, 2e-2, 2e-2);
}

// MOE_FLASH_ASYNC=1: the bf16 kernels' streamed tiles through cp.async double buffers. The same
// arithmetic in the same order as the synchronous tiles, so the same bits; under the emulation a
// tile read before its wait_group, or before the barrier after every thread's wait, reads the
// shared memory's NaN poison or the other buffer's stale tile (async_copy.h), so a missing wait or
// barrier fails the comparison.
struct Bf16Outputs {
  std::vector<float> out, lse, dq, dk, dv;
};

Bf16Outputs run_bf16(long B, long H, long S, int D, unsigned seed, AttentionLayout layout, const char* async) {
  EnvScope env("MOE_FLASH_ASYNC", async);
  const size_t n = static_cast<size_t>(B * H * S * D);
  DeviceBuffer<bf16> q = upload<bf16>(random_normal(n, seed, 1.5f)), k = upload<bf16>(random_normal(n, seed + 1, 1.5f)),
                     v = upload<bf16>(random_normal(n, seed + 2)), dout = upload<bf16>(random_normal(n, seed + 3)),
                     out(n), dq(n), dk(n), dv(n);
  DeviceBuffer<float> lse(static_cast<size_t>(B * H * S));
  flash_attention_forward(q.get(), k.get(), v.get(), out.get(), lse.get(), B, H, S, D, layout);
  flash_attention_backward(q.get(), k.get(), v.get(), out.get(), lse.get(), dout.get(), dq.get(), dk.get(), dv.get(),
                           B, H, S, D, layout);
  return {to_f32(out.to_host()), lse.to_host(), to_f32(dq.to_host()), to_f32(dk.to_host()), to_f32(dv.to_host())};
}

void check_async_same_bits(long B, long H, long S, int D, unsigned seed,
                           AttentionLayout layout = AttentionLayout::kBHSD) {
  const Bf16Outputs want = run_bf16(B, H, S, D, seed, layout, "0"), got = run_bf16(B, H, S, D, seed, layout, "1");
  const std::string where = "B=" + std::to_string(B) + " H=" + std::to_string(H) + " S=" + std::to_string(S) +
                            " D=" + std::to_string(D);
  EXPECT_TRUE(all_near(got.out, want.out, 0, 0)) << "out " << where;
  EXPECT_TRUE(all_near(got.lse, want.lse, 0, 0)) << "lse " << where;
  EXPECT_TRUE(all_near(got.dq, want.dq, 0, 0)) << "dq " << where;
  EXPECT_TRUE(all_near(got.dk, want.dk, 0, 0)) << "dk " << where;
  EXPECT_TRUE(all_near(got.dv, want.dv, 0, 0)) << "dv " << where;
}

// S below one tile (7, 19, 45), odd across several forward row tiles (150, 200: two of 128 rows,
// four 64-key tiles, so both buffers in turn) and backward steps (up to 7 of 32 rows); head dims
// 16, 40 (padded to 48), 64, 72 (80), 128 and 20 (no vector loads: the plain-store fallback);
// several batches and heads, both layouts.
TEST(CudaFlashAttention, AsyncTilesSameBitsAsSynchronous) {
  check_async_same_bits(1, 2, 45, 16, 201);
  check_async_same_bits(2, 3, 7, 40, 202);
  check_async_same_bits(1, 1, 200, 40, 203);
  check_async_same_bits(1, 2, 150, 64, 204);
  check_async_same_bits(2, 1, 131, 72, 205, AttentionLayout::kBSHD);
  check_async_same_bits(2, 2, 19, 128, 206, AttentionLayout::kBSHD);
  check_async_same_bits(1, 1, 150, 128, 207);
  check_async_same_bits(1, 2, 97, 20, 208, AttentionLayout::kBSHD);
}

TEST(CudaFlashAttention, AsyncTilesMatchCpuOpBf16) {
  EnvScope env("MOE_FLASH_ASYNC", "1");
  check_attention<bf16>(1, 2, 45, 24, 209, 2e-2, 2e-2);
  check_attention<bf16>(2, 2, 150, 72, 210, 2e-2, 2e-2, AttentionLayout::kBSHD);
  check_attention<bf16>(1, 1, 130, 128, 211, 2e-2, 2e-2);
  check_attention<bf16>(1, 1, 70, 20, 212, 2e-2, 2e-2);
}

// The default (unset): cp.async tiles from sm_90 on (the emulation models sm_90a), and the switch
// turns them either way.
TEST(CudaFlashAttention, AsyncTilesAreTheDefaultFromSm90) {
  {
    EnvScope env("MOE_FLASH_ASYNC", nullptr);
    EXPECT_EQ(flash_async_tiles(), device_sm() >= 90);
  }
  {
    EnvScope env("MOE_FLASH_ASYNC", "0");
    EXPECT_FALSE(flash_async_tiles());
  }
  {
    EnvScope env("MOE_FLASH_ASYNC", "1");
    EXPECT_TRUE(flash_async_tiles());
  }
}

TEST(CudaFlashAttention, AsyncSwitchRejectsOtherValues) {
  EnvScope env("MOE_FLASH_ASYNC", "yes");
  DeviceBuffer<bf16> x(4 * 16);
  DeviceBuffer<float> lse(4);
  EXPECT_THROW(flash_attention_forward(x.get(), x.get(), x.get(), x.get(), lse.get(), 1, 1, 4, 16), Error);
}

TEST(CudaFlashAttention, RejectsHeadDimAboveTheLimit) {
  DeviceBuffer<float> x(4 * (kFlashMaxHeadDim + 1)), lse(4);
  EXPECT_THROW(flash_attention_forward(x.get(), x.get(), x.get(), x.get(), lse.get(), 1, 1, 4, kFlashMaxHeadDim + 1),
               Error);
}

}  // namespace
