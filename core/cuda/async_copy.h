// Asynchronous global -> shared copies (sm_80+ cp.async), the building block of a multi-stage
// pipeline: a thread issues 16-byte copies, closes them into a group with cp_async_commit(), and
// cp_async_wait<N>() returns once all but the newest N of its groups have landed in shared memory.
// A wait makes only the calling thread's own copies visible to it; other threads see them after a
// __syncthreads that follows their issuers' waits.
//
//   cp_async16(dst, src, pred)  16 bytes from global src to shared dst (both 16-byte aligned);
//                               when !pred nothing is read and dst is zero-filled (src must still
//                               be a valid address to form: pass any in-range pointer)
//   cp_async_commit()           closes the copies issued since the last commit into one group
//   cp_async_wait<N>()          waits for every group but the newest N (copies not yet committed
//                               are not waited for)
//
// Under MOE_CUDA_EMULATION the semantics are emulated faithfully rather than by copying at once:
// each emulated thread queues its copies (thread-local), and only a wait performs them, oldest
// group first. So a kernel that reads a staged tile before its wait, or another thread's part
// before the barrier that follows that thread's wait, reads the shared memory's poison (0xFF
// bytes: NaN) or a stale tile, as it would on the GPU. The queue belongs to the block being run:
// a block that ends with copies pending leaves nothing to the next block (the runtime runs
// blocks, of this launch and later ones, one after another on the same host threads).
#pragma once
#include "core/cuda/kernel.h"

#ifdef MOE_CUDA_EMULATION
#include <cstdint>
#include <cstring>
#include <vector>

#include "core/error.h"
#endif

namespace moe::cuda {

#ifdef MOE_CUDA_EMULATION

namespace emu_async {

struct Copy {
  void* dst;
  const void* src;
  bool pred;
};

// One emulated thread's copies: `open` since the last commit, then the committed groups, oldest first.
struct Queue {
  uint64_t block = 0;  // the block run it belongs to (emu::block_serial)
  std::vector<Copy> open;
  std::vector<std::vector<Copy>> groups;
};
inline thread_local Queue t_queue;

inline Queue& queue() {
  Queue& q = t_queue;
  if (q.block != ::moe::cuda::emu::block_serial()) {
    q.open.clear();  // left over by an earlier block run by this host thread: its shared memory is gone
    q.groups.clear();
    q.block = ::moe::cuda::emu::block_serial();
  }
  return q;
}

}  // namespace emu_async

inline void cp_async16(void* smem_dst, const void* gmem_src, bool pred) {
  MOE_CHECK(reinterpret_cast<uintptr_t>(smem_dst) % 16 == 0 && reinterpret_cast<uintptr_t>(gmem_src) % 16 == 0,
            "cuda emulation", "cp_async16: destination ", smem_dst, " and source ", gmem_src,
            " must be 16-byte aligned");
  emu_async::queue().open.push_back(emu_async::Copy{smem_dst, gmem_src, pred});
}

inline void cp_async_commit() {
  emu_async::Queue& q = emu_async::queue();
  q.groups.push_back(std::move(q.open));
  q.open.clear();
}

template <int N>
void cp_async_wait() {
  static_assert(N >= 0, "cp_async_wait: N >= 0");
  emu_async::Queue& q = emu_async::queue();
  if (q.groups.size() <= size_t(N)) return;
  const size_t done = q.groups.size() - size_t(N);
  for (size_t g = 0; g < done; ++g)
    for (const emu_async::Copy& c : q.groups[g]) {
      if (c.pred)
        std::memcpy(c.dst, c.src, 16);
      else
        std::memset(c.dst, 0, 16);
    }
  q.groups.erase(q.groups.begin(), q.groups.begin() + std::ptrdiff_t(done));
}

#else

__device__ __forceinline__ void cp_async16(void* smem_dst, const void* gmem_src, bool pred) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
  // src-size 0: nothing is read and the 16 bytes are zero-filled.
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem_src), "r"(pred ? 16 : 0)
               : "memory");
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

template <int N>
__device__ __forceinline__ void cp_async_wait() {
  static_assert(N >= 0, "cp_async_wait: N >= 0");
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

#endif

}  // namespace moe::cuda
