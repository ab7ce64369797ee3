// The emulation of Hopper's wgmma (core/cuda/wgmma.h, which states the layouts and their sources,
// and includes this after its accumulator map acc_row / acc_col):
// each emulated thread queues its mma_asyncs (thread-local, like async_copy.h's cp.async queue)
// and performs them at the wait_group that retires them, computing its own accumulator entries
// from shared memory as the descriptors decode it. So accumulators are written only at the wait:
// a kernel that reads them before it gets stale values, as it could on the GPU. The hardware
// reads shared memory at some time between mma_async and the wait; the emulation reads the
// thread's operand entries at both ends and fails, naming the op, when they differ: a kernel that
// overwrites a stage before the wait, or whose copies land only after the mma_async was issued,
// has a race that the GPU may or may not show, and here it always fails. The emulated cp.async
// lands only at its issuer's wait (async_copy.h), so a copy still in flight is checked as well:
// a cp.async of the calling thread that has not landed, into a 16-byte chunk the mma_async reads,
// is an error at the mma_async (issued before its stage landed) and at its wait_group (a stage
// refilled while the products still read it). Other threads' copies in flight are not seen.
//
// TMA (emulation_tma.h): an mma_async reading bytes whose TMA load has not landed fails; the chunks
// an issued op reads stay marked until the warpgroup retires it, and a TMA load into them fails.
// A wait_group that retires ops ends with a barrier over the warpgroup (the GPU's op is one for the
// warpgroup: once one thread waited for it, it has read shared memory).
//
// Collectiveness: every call is a full-warp collective (warp_collective: all 32 lanes, the same
// arguments), and the thread's warpgroup must be complete in the block. Uniformity across the 4
// warps of a warpgroup is not checked (each warp is checked on its own).
#pragma once
#ifdef MOE_CUDA_EMULATION

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>
#include <vector>

#include "core/cuda/async_copy.h"
#include "core/cuda/emulation.h"
#include "core/cuda/emulation_tma.h"
#include "core/error.h"

namespace moe::cuda::emu_wgmma {

struct Op {
  float* d;
  int n;
  uint64_t desc_a, desc_b;
  bool accumulate, trans_a, trans_b;
  uint64_t operands_at_issue;    // a hash of the shared-memory bits this thread's entries read
  std::vector<uint32_t> chunks;  // the 16-byte chunks the warpgroup's op reads (chunks_read)
};

// One emulated thread's wgmma state: `open` since the last commit, the committed groups (oldest
// first), and whether a fence came since the last wait (or the start of the block). It belongs to
// the block being run (`block`, emu::block_serial): the runtime's host threads run blocks of this
// launch and later ones one after another, so another block means the previous one's state is gone.
struct State {
  uint64_t block = ~uint64_t(0);
  bool fenced = false;
  std::vector<Op> open;
  std::vector<std::vector<Op>> groups;
};
inline thread_local State t_state;

inline State& state() {
  const uint64_t block = ::moe::cuda::emu::block_serial();
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

// This thread's entries of d (+)= A B for one m64nNk16 (the accumulator map of wgmma.h), written
// to d when `write`; returns a hash (FNV-1a) of the operand bits read.
inline uint64_t perform(const Op& op, int t, bool write) {
  const Desc a = decode(op.desc_a), b = decode(op.desc_b);
  const auto* smem = static_cast<const unsigned char*>(::moe::cuda::emu::dynamic_shared());
  auto bits = [&](uint32_t offset) {
    uint16_t v;
    std::memcpy(&v, smem + offset, 2);
    return v;
  };
  uint64_t hash = 0xcbf29ce484222325ull;
  for (int i = 0; i < op.n / 2; ++i) {
    const int row = ::moe::cuda::wgmma::acc_row(t, i), col = ::moe::cuda::wgmma::acc_col(t, i);
    float acc = op.accumulate ? op.d[i] : 0.0f;
    for (int k = 0; k < 16; ++k) {
      const uint16_t x = bits(element_offset(a, op.trans_a, row, k)), y = bits(element_offset(b, op.trans_b, col, k));
      hash = (hash ^ (uint64_t(x) << 16 | y)) * 0x100000001b3ull;
      acc += std::bit_cast<float>(uint32_t(x) << 16) * std::bit_cast<float>(uint32_t(y) << 16);
    }
    if (write) op.d[i] = acc;
  }
  return hash;
}

// The 16-byte chunks (shared offset / 16) the whole warpgroup's op reads, sorted. A chunk holds 8
// consecutive k of a K-major row, or 8 consecutive rows of an MN-major k, in every layout here.
inline std::vector<uint32_t> chunks_read(const Op& op) {
  std::vector<uint32_t> chunks;
  auto add = [&](const Desc& d, bool mn_major, int rows) {
    for (int k = 0; k < 16; k += mn_major ? 1 : 8)
      for (int r = 0; r < rows; r += mn_major ? 8 : 1) chunks.push_back(element_offset(d, mn_major, r, k) / 16);
  };
  add(decode(op.desc_a), op.trans_a, 64);
  add(decode(op.desc_b), op.trans_b, op.n);
  std::sort(chunks.begin(), chunks.end());
  chunks.erase(std::unique(chunks.begin(), chunks.end()), chunks.end());
  return chunks;
}

// Fails when a cp.async of this thread that has not landed writes a chunk op reads.
inline void check_copies_in_flight(const Op& op, const char* when) {
  const std::vector<uint32_t>& chunks = op.chunks;
  const auto base = reinterpret_cast<uintptr_t>(::moe::cuda::emu::dynamic_shared());
  auto overlaps = [&](const ::moe::cuda::emu_async::Copy& c) {
    const auto at = reinterpret_cast<uintptr_t>(c.dst);
    return at >= base && std::binary_search(chunks.begin(), chunks.end(), uint32_t((at - base) / 16));
  };
  const ::moe::cuda::emu_async::Queue& q = ::moe::cuda::emu_async::queue();
  bool hit = std::any_of(q.open.begin(), q.open.end(), overlaps);
  for (const auto& g : q.groups) hit = hit || std::any_of(g.begin(), g.end(), overlaps);
  if (hit)
    MOE_FAIL("cuda emulation", "wgmma.mma_async (descriptors A 0x", std::hex, op.desc_a, ", B 0x", op.desc_b,
             "): a cp.async of this thread into shared memory it reads has not landed ", when);
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
  Op op{d, n, desc_a, desc_b, accumulate, trans_a, trans_b, 0, {}};
  op.chunks = chunks_read(op);
  check_copies_in_flight(op, "at its issue (wait for the stage's copies first)");
  ::moe::cuda::emu_tma::check_no_pending_load(op.chunks);
  // One thread per warpgroup marks what the op reads until the warpgroup retires it: a TMA load
  // into those bytes meanwhile is an error (emulation_tma.h).
  if (linear_tid() % 128 == 0) ::moe::cuda::emu_tma::mark_wgmma_reads(op.chunks, 1);
  op.operands_at_issue = perform(op, int(linear_tid() % 128), false);
  s.open.push_back(std::move(op));
}

inline void commit_group() {
  collective("wgmma.commit_group", 0x636f);
  State& s = state();
  s.groups.push_back(std::move(s.open));
  s.open.clear();
}

inline void wait_group(int n) {
  collective("wgmma.wait_group", uint64_t(n));
  State& s = state();
  s.fenced = false;  // the thread may now touch the accumulators: the next mma_async needs a fence
  if (s.groups.size() <= size_t(n)) return;
  const size_t done = s.groups.size() - size_t(n);
  const int t = int(linear_tid() % 128);
  for (size_t g = 0; g < done; ++g)
    for (const Op& op : s.groups[g]) {
      check_copies_in_flight(op, "at its wait_group (a stage refilled while wgmma reads it)");
      if (perform(op, t, true) != op.operands_at_issue)
        MOE_FAIL("cuda emulation", "wgmma.mma_async: shared memory it reads (descriptors A 0x", std::hex, op.desc_a,
                 ", B 0x", op.desc_b, ") changed between the mma_async and its wait_group (a race with its async read)");
    }
  // On the GPU an mma_async is one operation of the whole warpgroup: once any of its threads has
  // waited for it, it has read its operands. Here each thread reads its own entries at its wait,
  // so the warpgroup meets before any of them goes on (e.g. to release the stage).
  ::moe::cuda::emu::warpgroup_sync("wgmma.wait_group");
  if (t == 0)
    for (size_t g = 0; g < done; ++g)
      for (const Op& op : s.groups[g]) ::moe::cuda::emu_tma::mark_wgmma_reads(op.chunks, -1);
  s.groups.erase(s.groups.begin(), s.groups.begin() + std::ptrdiff_t(done));
}

}  // namespace moe::cuda::emu_wgmma

#endif  // MOE_CUDA_EMULATION
