// The caching device allocator: blocks are reused for same-size requests without new device
// allocations, sizes round as documented, double frees are reported, empty_cache returns memory.
#include <gtest/gtest.h>

#include "core/cuda/caching_allocator.h"
#include "core/cuda/memory.h"
#include "core/error.h"

using namespace moe;
using namespace moe::cuda;

TEST(CudaCachingAllocator, ReusesFreedBlocksWithoutDeviceCalls) {
  auto& a = CachingAllocator::instance();
  a.empty_cache();
  EXPECT_EQ(CachingAllocator::round_size(1), 512u);
  EXPECT_EQ(CachingAllocator::round_size(513), 1024u);
  EXPECT_EQ(CachingAllocator::round_size((1u << 20) + 1), size_t(2) << 20);
  const auto before = a.stats();
  void* p = a.allocate(1000);  // rounds to 1024
  void* q = a.allocate(3000);
  EXPECT_EQ(a.stats().device_allocations, before.device_allocations + 2);
  EXPECT_EQ(a.stats().bytes_in_use, before.bytes_in_use + 1024 + 3072);
  // The memory is usable device memory.
  std::vector<float> host(250, 1.5f), back(250);
  copy_to_device(p, host.data(), 1000);
  copy_to_host(back.data(), p, 1000);
  EXPECT_EQ(back, host);
  a.release(p);
  EXPECT_EQ(a.stats().bytes_cached, 1024u);
  void* p2 = a.allocate(1024);  // same rounded size: the cached block, no device call
  EXPECT_EQ(p2, p);
  EXPECT_EQ(a.stats().device_allocations, before.device_allocations + 2);
  a.release(p2);
  a.release(q);
  EXPECT_THROW(a.release(q), Error);
  EXPECT_EQ(a.stats().bytes_in_use, before.bytes_in_use);
  a.empty_cache();
  EXPECT_EQ(a.stats().bytes_cached, 0u);
  {
    Workspace<int> w(100);
    EXPECT_NE(w.get(), nullptr);
    EXPECT_EQ(a.stats().bytes_in_use, before.bytes_in_use + 512);
  }
  EXPECT_EQ(a.stats().bytes_in_use, before.bytes_in_use);
}
