// Size-class pool over aligned_alloc. Classes are powers of two from 64 B; blocks above
// 1 GiB bypass the pool. One mutex: allocation is not on any inner loop.
#include "core/allocator.h"

#include <malloc.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <vector>

#include "core/error.h"

namespace moe {
namespace {

constexpr int kClasses = 31;  // 64 B .. 64 GiB
constexpr size_t kMaxPooled = size_t(1) << 30;

struct Pool {
  std::mutex mu;
  std::vector<void*> free_lists[kClasses];
  HostPoolStats stats;
  ~Pool() {
    for (auto& list : free_lists)
      for (void* p : list) std::free(p);
  }
};

Pool& pool() {
  static Pool* p = new Pool();  // leaked on purpose: tensors may die during static destruction
  return *p;
}

int size_class(size_t bytes) {
  int c = 0;
  size_t s = kHostAlignment;
  while (s < bytes) {
    s <<= 1;
    ++c;
  }
  return c;
}

size_t class_bytes(int c) { return kHostAlignment << c; }

}  // namespace

void* host_alloc(size_t bytes) {
  if (bytes == 0) bytes = 1;
  Pool& p = pool();
  if (bytes > kMaxPooled) {
    void* ptr = std::aligned_alloc(kHostAlignment, (bytes + kHostAlignment - 1) / kHostAlignment * kHostAlignment);
    if (!ptr) throw std::bad_alloc();
    std::lock_guard<std::mutex> lock(p.mu);
    p.stats.allocations++;
    return ptr;
  }
  int c = size_class(bytes);
  {
    std::lock_guard<std::mutex> lock(p.mu);
    p.stats.allocations++;
    auto& list = p.free_lists[c];
    if (!list.empty()) {
      void* ptr = list.back();
      list.pop_back();
      p.stats.pool_hits++;
      p.stats.bytes_cached -= class_bytes(c);
      return ptr;
    }
  }
  void* ptr = std::aligned_alloc(kHostAlignment, class_bytes(c));
  if (!ptr) throw std::bad_alloc();
  return ptr;
}

void host_free(void* ptr, size_t bytes) {
  if (!ptr) return;
  if (bytes == 0) bytes = 1;
  if (bytes > kMaxPooled) {
    std::free(ptr);
    return;
  }
  int c = size_class(bytes);
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mu);
  p.free_lists[c].push_back(ptr);
  p.stats.bytes_cached += class_bytes(c);
}

HostPoolStats host_pool_stats() {
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mu);
  return p.stats;
}

void host_pool_release() {
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mu);
  for (auto& list : p.free_lists) {
    for (void* ptr : list) std::free(ptr);
    list.clear();
  }
  p.stats.bytes_cached = 0;
}

void tune_host_malloc() {
  const char* v = std::getenv("MOE_HOST_MALLOC");
  MOE_CHECK(!v || !*v || std::strcmp(v, "default") == 0 || std::strcmp(v, "tuned") == 0, "MOE_HOST_MALLOC",
            "is '", v, "': expected 'tuned' (the default) or 'default' (glibc's own settings)");
  if (v && std::strcmp(v, "default") == 0) return;
  mallopt(M_MMAP_THRESHOLD, 64 << 20);
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
}

}  // namespace moe
