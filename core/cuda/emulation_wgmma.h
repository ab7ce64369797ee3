// The emulation of Hopper's wgmma (core/cuda/wgmma.h, which states the layouts and their sources,
// and includes this after its accumulator map acc_row / acc_col):
// each emulated thread queues its mma_asyncs (thread-local, like async_copy.h's cp.async queue)
// and performs them at the wait_group that retires them, computing its own accumulator entries
// from shared memory as the descriptors decode it. So shared memory is read, and accumulators are
// written, only at the wait: a kernel that overwrites an operand stage before its wait, or reads
// accumulators before it, gets a wrong product here as it would on the GPU.
//
// Collectiveness: every call is a full-warp collective (warp_collective: all 32 lanes, the same
// arguments), and the thread's warpgroup must be complete in the block. Uniformity across the 4
// warps of a warpgroup is not checked (each warp is checked on its own).
#pragma once
#ifdef MOE_CUDA_EMULATION

#include <bit>
#include <cstdint>
#include <cstring>
#include <vector>

#include "core/cuda/emulation.h"
#include "core/error.h"

namespace moe::cuda::emu_wgmma {

struct Op {
  float* d;
  int n;
  uint64_t desc_a, desc_b;
  bool accumulate, trans_a, trans_b;
};

// One emulated thread's wgmma state: `open` since the last commit, the committed groups (oldest
// first), and whether a fence came since the last wait (or the start of the block). It belongs to
// the block being run (`block`, its linear index): the runtime runs a launch's blocks one after
// another on the same host threads, so a new index means the previous block's state is gone.
struct State {
  uint64_t block = ~uint64_t(0);
  bool fenced = false;
  std::vector<Op> open;
  std::vector<std::vector<Op>> groups;
};
inline thread_local State t_state;

inline State& state() {
  const uint64_t block = blockIdx.x + uint64_t(gridDim.x) * (blockIdx.y + uint64_t(gridDim.y) * blockIdx.z);
  if (t_state.block != block) t_state = State{block, false, {}, {}};
  return t_state;
}

inline unsigned linear_tid() { return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z); }

// Every wgmma call: a full warp with warp-uniform arguments, inside a complete warpgroup.
inline void collective(const char* what, uint64_t uniform) {
  const unsigned nthreads = blockDim.x * blockDim.y * blockDim.z, wg = linear_tid() / 128;
  if ((wg + 1) * 128 > nthreads)
    MOE_FAIL("cuda emulation", what, ": thread ", linear_tid(), " is not in a complete warpgroup (block of ",
             nthreads, " threads; a warpgroup is 128 consecutive threads)");
  ::moe::cuda::emu::warp_collective(what, uniform);
}

// Descriptor addresses are offsets into the block's dynamic shared memory.
inline uint32_t smem_address(const void* p) {
  const auto base = reinterpret_cast<uintptr_t>(::moe::cuda::emu::dynamic_shared());
  const auto at = reinterpret_cast<uintptr_t>(p);
  MOE_CHECK(at >= base && at - base < (uintptr_t(1) << 18), "cuda emulation",
            "wgmma smem_address: the pointer is not in the block's dynamic shared memory");
  return uint32_t(at - base);
}

struct Desc {
  uint32_t start, lbo, sbo, base_offset, swizzle;
};
inline Desc decode(uint64_t d) {
  return Desc{uint32_t(d & 0x3FFF) << 4, uint32_t(d >> 16 & 0x3FFF) << 4, uint32_t(d >> 32 & 0x3FFF) << 4,
              uint32_t(d >> 49 & 0x7), uint32_t(d >> 62 & 0x3)};
}

inline void check_desc(const char* operand, uint64_t bits, bool mn_major) {
  const Desc d = decode(bits);
  MOE_CHECK(d.swizzle == 0 || d.swizzle == 1, "cuda emulation", "wgmma.mma_async: ", operand, " descriptor swizzle mode ",
            d.swizzle, " is not emulated (0 = none and 1 = 128B are)");
  MOE_CHECK(d.base_offset == 0, "cuda emulation", "wgmma.mma_async: ", operand, " descriptor base offset ",
            d.base_offset, " is not emulated (swizzle atoms must start on their 1024-byte boundary)");
  MOE_CHECK(d.sbo != 0 && (d.swizzle != 0 || d.lbo != 0), "cuda emulation", "wgmma.mma_async: ", operand,
            " descriptor has a zero stride (LBO ", d.lbo, ", SBO ", d.sbo, ")");
  MOE_CHECK(!mn_major || d.swizzle == 1, "cuda emulation", "wgmma.mma_async: ", operand,
            " is MN-major without swizzle, which is not emulated (MN-major needs 128B swizzle here)");
  if (d.swizzle == 1 && mn_major)
    MOE_CHECK(d.start % 1024 == 0, "cuda emulation", "wgmma.mma_async: ", operand, " descriptor start address ",
              d.start, " is misaligned for MN-major 128B swizzle (expected a 1024-byte boundary)");
  else if (d.swizzle == 1)
    MOE_CHECK((d.start >> 7 & 7) == 0 && (d.start & 0x7F) % 32 == 0, "cuda emulation", "wgmma.mma_async: ", operand,
              " descriptor start address ", d.start,
              " is misaligned for 128B swizzle (expected a 1024-byte aligned atom plus 0, 32, 64 or 96 bytes)");
}

// Byte offset of element (r, k) (r: the row of A or the column of B; k: the reduction index)
// under descriptor d, K-major or MN-major (wgmma.h's canonical layouts).
inline uint32_t element_offset(const Desc& d, bool mn_major, int r, int k) {
  const uint32_t ur = uint32_t(r), uk = uint32_t(k);
  if (d.swizzle == 0) return d.start + ur / 8 * d.sbo + ur % 8 * 16 + uk / 8 * d.lbo + uk % 8 * 2;
  const uint32_t a = mn_major ? d.start + ur / 64 * d.lbo + ur % 64 * 2 + uk % 8 * 128 + uk / 8 * d.sbo
                              : d.start + ur / 8 * d.sbo + ur % 8 * 128 + uk * 2;
  return a ^ ((a >> 7 & 7) << 4);
}

inline float load_bf16(uint32_t offset) {
  uint16_t b;
  std::memcpy(&b, static_cast<const unsigned char*>(::moe::cuda::emu::dynamic_shared()) + offset, 2);
  return std::bit_cast<float>(uint32_t(b) << 16);
}

inline void fence() {
  collective("wgmma.fence", 0x6665);
  state().fenced = true;
}

inline void mma_async(float* d, int n, uint64_t desc_a, uint64_t desc_b, bool accumulate, bool trans_a,
                      bool trans_b) {
  collective("wgmma.mma_async", desc_a ^ (desc_b * 0x9E3779B97F4A7C15ull) ^ uint64_t(n) << 3 ^
                                    uint64_t(accumulate) ^ uint64_t(trans_a) << 1 ^ uint64_t(trans_b) << 2);
  State& s = state();
  MOE_CHECK(s.fenced, "cuda emulation",
            "wgmma.mma_async without a wgmma.fence since the thread's last wait_group (or the start of the kernel)");
  check_desc("A", desc_a, trans_a);
  check_desc("B", desc_b, trans_b);
  s.open.push_back(Op{d, n, desc_a, desc_b, accumulate, trans_a, trans_b});
}

inline void commit_group() {
  collective("wgmma.commit_group", 0x636f);
  State& s = state();
  s.groups.push_back(std::move(s.open));
  s.open.clear();
}

// This thread's entries of d (+)= A B for one m64nNk16 (the accumulator map of wgmma.h).
inline void perform(const Op& op, int t) {
  const Desc a = decode(op.desc_a), b = decode(op.desc_b);
  for (int i = 0; i < op.n / 2; ++i) {
    const int row = ::moe::cuda::wgmma::acc_row(t, i), col = ::moe::cuda::wgmma::acc_col(t, i);
    float acc = op.accumulate ? op.d[i] : 0.0f;
    for (int k = 0; k < 16; ++k)
      acc += load_bf16(element_offset(a, op.trans_a, row, k)) * load_bf16(element_offset(b, op.trans_b, col, k));
    op.d[i] = acc;
  }
}

inline void wait_group(int n) {
  collective("wgmma.wait_group", uint64_t(n));
  State& s = state();
  s.fenced = false;  // the thread may now touch the accumulators: the next mma_async needs a fence
  if (s.groups.size() <= size_t(n)) return;
  const size_t done = s.groups.size() - size_t(n);
  const int t = int(linear_tid() % 128);
  for (size_t g = 0; g < done; ++g)
    for (const Op& op : s.groups[g]) perform(op, t);
  s.groups.erase(s.groups.begin(), s.groups.begin() + std::ptrdiff_t(done));
}

}  // namespace moe::cuda::emu_wgmma

#endif  // MOE_CUDA_EMULATION
