// CPU emulation of the CUDA kernel model (MOE_CUDA_EMULATION): lets a .cu kernel source compile
// with the host compiler and run each block's threads as real threads with real barriers.
// The host threads are a pool shared by all launches (one launch runs at a time).
#pragma once
#ifdef MOE_CUDA_EMULATION

#include <atomic>
#include <bit>
#include <cfloat>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <source_location>
#include <type_traits>

// ---- the built-in types and variables kernels see ----
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct CUstream_st;
using cudaStream_t = CUstream_st*;

// Each emulated GPU thread is a host thread, so the indices are thread-local.
extern thread_local dim3 threadIdx;
extern thread_local dim3 blockIdx;
extern thread_local dim3 blockDim;
extern thread_local dim3 gridDim;
constexpr int warpSize = 32;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __grid_constant__  // a kernel parameter the GPU reads in place (a TensorMap): a plain parameter here

namespace moe::cuda::emu {

// Runs `body` once per thread of every block of the grid; blocks run one after another, the
// threads of a block concurrently. Throws moe::Error naming the kernel on a bad configuration
// (the GPU's launch limits, shared memory above what `kernel` opted in to) or when a kernel
// thread failed (a warp op with a partial mask, a divergent __syncthreads, an exception).
void run_grid(const char* name, const void* kernel, dim3 grid, dim3 block, size_t dynamic_shared_bytes,
              const std::function<void()>& body);

// What cudaFuncSetAttribute(kernel, MaxDynamicSharedMemorySize, bytes) records on the GPU: a
// launch of `kernel` above 48 KiB of dynamic shared memory is refused without it. Fails as the
// GPU would when `bytes` exceeds the target's per-block limit.
void allow_dynamic_shared(const char* op, const void* kernel, size_t bytes);
// The GPU whose per-block shared-memory limit launches are checked against: 80 (163 KiB, the
// default: every kernel also runs on sm_80) or 90 (227 KiB, for sm_90-only kernels). Returns the
// previous one.
int set_target_sm(int sm);

// __syncthreads: a barrier over the block's threads that have not exited. Threads that meet at
// barriers of different call sites (`site`) fail the launch: a divergent __syncthreads hangs or
// corrupts on the GPU even where the emulation's barrier, which only counts threads, would pass.
// When every live thread of the block is asleep at this barrier or a warp's (syncwarp, the warp
// ops), none can complete: the launch fails naming them (a deadlock; the GPU would hang).
void syncthreads(const std::source_location& site);
// A barrier over the warp's live lanes (also what __syncwarp is).
void syncwarp(unsigned mask);
// A barrier over the live threads of the caller's warpgroup (128 consecutive threads; fails naming
// `what` outside a complete one, or in a deadlock, as syncthreads): how emulated wgmma and
// setmaxnreg make warpgroup-wide instructions collective.
void warpgroup_sync(const char* what);
// One warp rendezvous: every live lane publishes 8 bytes, then each reads all 32 slots (lanes that
// do not exist or have exited read back as all-ones bits, i.e. NaN / -1, so misuse shows). Lanes
// may meet from different call sites, as sm_70+ allows for shfl.sync / vote.sync.
void warp_exchange(unsigned mask, uint64_t mine, uint64_t (&all)[32], unsigned& live_lanes);
unsigned lane_id();
// Per-block shared memory, poisoned with 0xFF bytes (NaN / -1) at the start of every block so a
// read before a write (e.g. a missing barrier) is visible. `key` identifies the declaration.
void* static_shared(const void* key, size_t bytes, size_t align);
void* dynamic_shared();
// The launch's dynamic shared bytes, and whether [p, p + bytes) lies in the block's shared memory
// (dynamic, or one static declaration).
size_t dynamic_shared_bytes();
bool in_shared(const void* p, size_t bytes);
// State of an emulated feature shared by the block's threads (mbarrier copies, named barriers):
// `make` builds it at the first call of the block (under a lock), `destroy` frees it when the
// block ends; `key` identifies the feature.
void* block_local(const void* key, void* (*make)(), void (*destroy)(void*));
// A number unique to the block being run, for per-thread state kept in a thread_local (an
// emulated thread's async-copy queue): the runtime's host threads run one block after another and
// are reused by later launches, so such state must be keyed by the block run, not by blockIdx.
uint64_t block_serial();
// Whether a thread of the launch has failed: a thread spinning on a condition that thread would
// have met (an mbarrier, a named barrier) gives up instead of waiting for its timeout.
bool launch_failed();

template <class T>
uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "warp ops move at most 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <class T>
T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}
template <class T>
T shuffle_from(unsigned mask, T var, int src_lane) {
  uint64_t all[32];
  unsigned live = 0;
  warp_exchange(mask, to_bits(var), all, live);
  return from_bits<T>(all[src_lane & 31]);
}

}  // namespace moe::cuda::emu

// Shared memory declarations: MOE_SHARED(float, tile, [32][33]) is `__shared__ float tile[32][33]`.
#define MOE_SHARED(type, name, dims)                                                               \
  using name##_moe_shared_t = type dims;                                                           \
  auto& name = *static_cast<name##_moe_shared_t*>(::moe::cuda::emu::static_shared(                 \
      [] {                                                                                         \
        static const char moe_key = 0;                                                             \
        return static_cast<const void*>(&moe_key);                                                 \
      }(),                                                                                         \
      sizeof(name##_moe_shared_t), alignof(name##_moe_shared_t)))
#define MOE_DYNAMIC_SHARED(type, name) type* name = static_cast<type*>(::moe::cuda::emu::dynamic_shared())

inline void __syncthreads(std::source_location site = std::source_location::current()) {
  ::moe::cuda::emu::syncthreads(site);
}
inline void __syncwarp(unsigned mask = 0xffffffffu) { ::moe::cuda::emu::syncwarp(mask); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }

// ---- warp shuffles and votes (CUDA's lane and width rules) ----
template <class T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize) {
  int lane = int(::moe::cuda::emu::lane_id());
  int src = (lane & ~(width - 1)) + (src_lane & (width - 1));
  return ::moe::cuda::emu::shuffle_from(mask, var, src);
}
template <class T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  int lane = int(::moe::cuda::emu::lane_id());
  int src = (lane & (width - 1)) + int(delta) < width ? lane + int(delta) : lane;
  return ::moe::cuda::emu::shuffle_from(mask, var, src);
}
template <class T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  int lane = int(::moe::cuda::emu::lane_id());
  int src = (lane & (width - 1)) >= int(delta) ? lane - int(delta) : lane;
  return ::moe::cuda::emu::shuffle_from(mask, var, src);
}
template <class T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize) {
  int lane = int(::moe::cuda::emu::lane_id());
  int src = lane ^ lane_mask;
  if (src / width != lane / width) src = lane;
  return ::moe::cuda::emu::shuffle_from(mask, var, src);
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
  uint64_t all[32];
  unsigned live = 0;
  ::moe::cuda::emu::warp_exchange(mask, pred ? 1 : 0, all, live);
  unsigned out = 0;
  for (int l = 0; l < 32; ++l)
    if ((live >> l & 1u) && all[l] == 1) out |= 1u << l;
  return out & mask;
}
inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }
inline int __all_sync(unsigned mask, int pred) {
  uint64_t all[32];
  unsigned live = 0;
  ::moe::cuda::emu::warp_exchange(mask, pred ? 1 : 0, all, live);
  for (int l = 0; l < 32; ++l)
    if ((live & mask) >> l & 1u && all[l] != 1) return 0;
  return 1;
}

// ---- atomics on global or shared memory ----
template <class T>
T atomicAdd(T* address, T val) {
  return std::atomic_ref<T>(*address).fetch_add(val);
}
template <class T>
T atomicSub(T* address, T val) {
  return std::atomic_ref<T>(*address).fetch_sub(val);
}
template <class T>
T atomicExch(T* address, T val) {
  return std::atomic_ref<T>(*address).exchange(val);
}
template <class T>
T atomicCAS(T* address, T compare, T val) {
  std::atomic_ref<T>(*address).compare_exchange_strong(compare, val);
  return compare;  // the old value, whether or not the swap happened
}
template <class T>
T atomicMax(T* address, T val) {
  std::atomic_ref<T> ref(*address);
  T old = ref.load();
  while (old < val && !ref.compare_exchange_weak(old, val)) {
  }
  return old;
}
template <class T>
T atomicMin(T* address, T val) {
  std::atomic_ref<T> ref(*address);
  T old = ref.load();
  while (val < old && !ref.compare_exchange_weak(old, val)) {
  }
  return old;
}

// ---- device math intrinsics the host lacks ----
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __int_as_float(int v) { return std::bit_cast<float>(v); }
inline int __float_as_int(float v) { return std::bit_cast<int>(v); }
inline float __uint_as_float(unsigned v) { return std::bit_cast<float>(v); }
inline unsigned __float_as_uint(float v) { return std::bit_cast<unsigned>(v); }
template <class T>
T __ldg(const T* p) {
  return *p;
}

// ---- mma.sync / ldmatrix (core/cuda/mma.h) ----
namespace moe::cuda::emu {
// A warp-collective exchange of `words` 8-byte values per lane: all[w * 32 + l] is lane l's
// mine[w]. All 32 lanes of a full warp must take part, else every lane throws naming `what`.
void warp_gather(const char* what, const uint64_t* mine, int words, uint64_t* all);
}  // namespace moe::cuda::emu
// ---- end mma.sync / ldmatrix ----

#include "core/cuda/emulation_wmma.h"

#endif  // MOE_CUDA_EMULATION
