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
void host_pool_release();  // give all cached blocks back to the system

}  // namespace moe
