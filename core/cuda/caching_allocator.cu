// The caching allocator over device_malloc / device_free: exact-size free lists, a retry after
// emptying the cache when the device is out of memory, and counters for tests and metrics.
#include "core/cuda/caching_allocator.h"
#include "core/cuda/memory.h"
#include "core/error.h"

namespace moe::cuda {

namespace {
constexpr size_t kSmallRound = 512;
constexpr size_t kLargeThreshold = size_t(1) << 20;
constexpr size_t kLargeRound = size_t(2) << 20;
}  // namespace

CachingAllocator& CachingAllocator::instance() {
  static CachingAllocator* a = new CachingAllocator();  // never destroyed: outlives static users
  return *a;
}

size_t CachingAllocator::round_size(size_t bytes) {
  if (bytes == 0) bytes = 1;
  const size_t r = bytes <= kLargeThreshold ? kSmallRound : kLargeRound;
  return (bytes + r - 1) / r * r;
}

void* CachingAllocator::allocate(size_t bytes) {
  const size_t size = round_size(bytes);
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = free_.find(size);
  void* p = nullptr;
  if (it != free_.end() && !it->second.empty()) {
    p = it->second.back();
    it->second.pop_back();
    stats_.bytes_cached -= size;
#ifdef MOE_CUDA_EMULATION
    // A reused block holds its last user's data, on the GPU too; poison it as device_malloc does,
    // so a kernel that reads scratch before writing it (or relies on zeros) fails here as well.
    device_memset(p, 0xFF, size);
#endif
  } else {
    try {
      p = device_malloc(size);
    } catch (const Error&) {
      // Out of memory: give the cached blocks back and try once more.
      for (auto& [s, blocks] : free_)
        for (void* b : blocks) device_free(b);
      free_.clear();
      stats_.bytes_cached = 0;
      p = device_malloc(size);
    }
    ++stats_.device_allocations;
  }
  live_[p] = size;
  stats_.bytes_in_use += size;
  return p;
}

void CachingAllocator::release(void* p) {
  if (!p) return;
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = live_.find(p);
  MOE_CHECK(it != live_.end(), "CachingAllocator::release", "pointer ", p, " was not allocated here (or freed twice)");
  const size_t size = it->second;
  live_.erase(it);
  free_[size].push_back(p);
  stats_.bytes_in_use -= size;
  stats_.bytes_cached += size;
}

void CachingAllocator::empty_cache() {
  std::lock_guard<std::mutex> lock(mutex_);
  for (auto& [s, blocks] : free_)
    for (void* b : blocks) device_free(b);
  free_.clear();
  stats_.bytes_cached = 0;
}

CachingAllocator::Stats CachingAllocator::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

CachingAllocator::~CachingAllocator() { empty_cache(); }

}  // namespace moe::cuda
