// Kernels fed what faults only on a GPU: pointers that are views at odd elements (a vector access
// there is misaligned), workspace memory handed out again by the caching allocator. Each case must
// give what the aligned / fresh case gives, on the GPU and under the emulation.
#include <gtest/gtest.h>

#include <vector>

#include "core/cuda/attention.h"
#include "core/cuda/memory.h"
#include "tests/cuda/kernel_test_util.h"

using namespace moe;
using namespace moe::cuda;
using namespace moe::test;

namespace {

// A device copy of v that starts `offset` elements into its buffer (offset 1: 2-byte aligned).
struct OffsetBuffer {
  DeviceBuffer<bf16> buf;
  long offset;
  OffsetBuffer(const std::vector<float>& v, long off) : buf(v.size() + 8), offset(off) {
    const auto b = to_bf16(v);
    copy_to_device(get(), b.data(), b.size() * sizeof(bf16));
  }
  explicit OffsetBuffer(size_t n, long off) : buf(n + 8), offset(off) {}
  bf16* get() { return buf.get() + offset; }
  std::vector<float> to_host(size_t n) {
    std::vector<bf16> out(n);
    copy_to_host(out.data(), get(), n * sizeof(bf16));
    return to_f32(out);
  }
};

struct AttentionRun {
  std::vector<float> out, dq, dk, dv;
};

// bf16 flash attention forward and backward with every operand starting `offset` elements in.
AttentionRun run_attention(long B, long H, long S, int D, long offset) {
  const size_t n = size_t(B * H * S * D);
  OffsetBuffer q(random_normal(n, 1), offset), k(random_normal(n, 2), offset), v(random_normal(n, 3), offset),
      dout(random_normal(n, 4), offset), out(n, offset), dq(n, offset), dk(n, offset), dv(n, offset);
  DeviceBuffer<float> lse(size_t(B * H * S));
  flash_attention_forward<bf16>(q.get(), k.get(), v.get(), out.get(), lse.get(), B, H, S, D);
  flash_attention_backward<bf16>(q.get(), k.get(), v.get(), out.get(), lse.get(), dout.get(), dq.get(), dk.get(),
                                 dv.get(), B, H, S, D);
  return {out.to_host(n), dq.to_host(n), dk.to_host(n), dv.to_host(n)};
}

// The tensor-core attention stores pairs of bf16 as one 32-bit word when the head dim is even;
// an output view at an odd element made that store misaligned (a fault on the GPU). Offset 1
// (and 3) must take the element stores and give the aligned run's bits; offset 8 is 16-byte
// aligned and keeps the vector loads.
TEST(GpuHazards, AttentionOnViewsAtOddElementsMatchesAligned) {
  const long B = 1, H = 2, S = 19;
  for (int D : {16, 40}) {
    const AttentionRun want = run_attention(B, H, S, D, 0);
    for (long offset : {1L, 3L, 8L}) {
      const AttentionRun got = run_attention(B, H, S, D, offset);
      EXPECT_EQ(got.out, want.out) << "D " << D << ", offset " << offset;
      EXPECT_EQ(got.dq, want.dq) << "D " << D << ", offset " << offset;
      EXPECT_EQ(got.dk, want.dk) << "D " << D << ", offset " << offset;
      EXPECT_EQ(got.dv, want.dv) << "D " << D << ", offset " << offset;
    }
  }
}

}  // namespace
