// Aligned, pooled host allocator: freed blocks are kept per size class and reused, so the
// training step loop does not go back to malloc for activations of the same shapes.
#pragma once
#include <cstddef>

namespace moe {

constexpr size_t kHostAlignment = 64;  // one cache line, and enough for AVX-512 loads

void* host_alloc(size_t bytes);
void host_free(void* ptr, size_t bytes);

struct HostPoolStats {
  size_t allocations = 0;  // calls to host_alloc
  size_t pool_hits = 0;    // of which were served from the pool
  size_t bytes_cached = 0; // bytes held in free lists now
};
HostPoolStats host_pool_stats();
// Process-wide malloc settings for the training loop (called first by moetrain and by the
// benchmark binary). glibc serves every block of 128 KiB or more by mmap and returns it on free;
// its adaptive threshold only lets later blocks of strictly smaller size come from the heap, so
// host vectors of the same size every step (the dispatch plan: 7 of 128-256 KiB at T 16384, top-2)
// fault in fresh pages each time (make_dispatch_plan measured 0.9 ms, 0.27 ms without the mmaps).
// Blocks up to 64 MiB come from the heap and up to 256 MiB of freed heap top stays mapped.
// MOE_HOST_MALLOC=default keeps glibc's defaults (to measure the difference).
void tune_host_malloc();
void host_pool_release();  // give all cached blocks back to the system

}  // namespace moe
