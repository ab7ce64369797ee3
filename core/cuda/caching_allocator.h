// A caching device allocator: freed blocks go to per-size free lists and are handed out again, so
// the training step loop never calls cudaMalloc / cudaFree (which synchronize the device).
#pragma once
#include <cstddef>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace moe::cuda {

// Sizes round up to 512 B (small) or 2 MiB (above 1 MiB), and a block is reused only for a
// request of the same rounded size. Reuse is safe in stream order: kernels on one stream that
// used a block finish before later kernels on that stream start (one compute stream for now).
class CachingAllocator {
 public:
  struct Stats {
    size_t bytes_in_use = 0;  // handed out, rounded sizes
    size_t bytes_cached = 0;  // held in the free lists
    size_t device_allocations = 0;  // calls to the underlying device_malloc so far
  };

  static CachingAllocator& instance();
  static size_t round_size(size_t bytes);

  void* allocate(size_t bytes);
  void release(void* p);
  void empty_cache();  // returns every cached block to the device
  Stats stats() const;

  ~CachingAllocator();

 private:
  mutable std::mutex mutex_;
  std::unordered_map<size_t, std::vector<void*>> free_;  // rounded size -> cached blocks
  std::unordered_map<void*, size_t> live_;               // block -> rounded size
  Stats stats_;
};

// A typed block from the caching allocator, returned on scope exit (a kernel's scratch space).
template <class T>
class Workspace {
 public:
  explicit Workspace(size_t n) : p_(static_cast<T*>(CachingAllocator::instance().allocate(n * sizeof(T)))) {}
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  ~Workspace() { CachingAllocator::instance().release(p_); }
  T* get() const { return p_; }

 private:
  T* p_;
};

}  // namespace moe::cuda
