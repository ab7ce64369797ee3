// The emulation of core/cuda/tma.h (included from it under MOE_CUDA_EMULATION): faithful enough
// that the emulated run is a real check of a TMA / mbarrier / warp-specialized kernel.
//
// mbarrier: a real 64-bit word where the kernel put it (shared memory, 8-byte aligned), updated
// atomically: bits 0-19 pending arrivals of the current phase, 20-39 the expected count (init),
// 40-60 tx-count (signed), 61 the current phase's parity, 62-63 a marker (01; the poison 0xFF..
// is "not initialized"). As PTX defines: arrive decrements the pending count, expect_tx adds to
// tx-count, a copy's complete_tx subtracts its bytes; the phase completes when both are 0, and
// the next phase starts with the expected count. mbar_wait(parity) returns once the phase of
// that parity completed (the current parity differs). Errors: use before init; an arrival when
// no arrival is pending (more arrivals per phase than init's count); tx-count out of range.
//
// Copies land late: load_2d / load_3d check the map, the coordinates' map rank, the destination
// (in the dynamic shared memory, 1024-byte aligned, the whole box inside it) and the barrier,
// poison the destination (0xFF bytes: NaN) and queue the copy on the block. The copy is performed
// (global memory read then, out-of-range elements zero, the 128B swizzle: chunk c of box row r at
// c ^ (r % 8)) and its bytes completed on its barrier only when some thread waits on that barrier.
// So a consumer that reads a stage before waiting for its full barrier reads NaN, and a wrong
// expect_tx count leaves a phase that never completes: a wait that sees no change of its barrier
// for the timeout (20 s; set_wait_timeout) fails the launch with one line naming the barrier's
// state, and every other spinning thread then gives up. A second load into bytes whose earlier
// load has not landed fails (a producer that refills a stage before its consumers waited).
//
// Stores (store_2d) are per-thread bulk groups as on the GPU: the issue checks the map, the
// coordinates and the source (dynamic shared memory, 1024-byte aligned) and keeps a copy of the
// source; the store is performed when its thread's bulk_wait_group(_read) releases its group: the
// source must then still hold those bytes (a kernel that rewrites the staging before
// wait_group.read fails with one line), and only the box's in-range elements are written
// (clipping), as an H100 clips them (tests/cuda/tma_test.cpp, measured 2026-11-27): rows past the
// last and columns past the innermost dimension's end are not written, but the innermost
// dimension is clipped at whole 16-byte chunks, so when dims[0] is not a multiple of 16 bytes the
// elements after it up to the chunk's end (the row's padding) are written too. A store at a
// negative coordinate (a box starting before the tensor) faults the GPU ("an illegal instruction
// was encountered"): the emulation fails it at the issue. The proxy fence is checked at the issue
// too: a source chunk that changed since the previous store read it, with no
// fence_proxy_async_shared in the block since, fails (as does a block's first store before any
// fence). A store never waited for lands as 0xFF bytes when the block ends, with a line on stderr.
//
// With wgmma (emulation_wgmma.h): each warp's issued, not yet retired mma_asyncs mark the 16-byte
// chunks they read; a load issued (or landing) into a marked chunk fails (a producer that did not
// wait for the stage's empty barrier), and an mma_async reading bytes whose load has not landed
// fails (a consumer that did not wait for the full barrier). The poison written at the issue also
// changes what the wgmma reads, which its wait_group reports as a race.
//
// setmaxnreg: executed by all 4 warps of a complete warpgroup with one count (warp-collective,
// then the warpgroup meets and compares); .inc may not lower, .dec not raise, the last count. named_barrier_sync(id, n): id 1..15, n a
// multiple of 32 up to the block size, every arrival of a phase with the same n, full warps
// (warp-collective); completes when n threads arrived. elect_one: a full-warp collective, lane 0.
#pragma once
#ifdef MOE_CUDA_EMULATION

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "core/cuda/emulation.h"
#include "core/cuda/tensor_map.h"
#include "core/error.h"

namespace moe::cuda::emu_tma {

// What make_tensor_map writes into a TensorMap's 128 bytes under the emulation.
constexpr uint32_t kMapMagic = 0x544d4170;
struct MapFields {
  uint32_t magic, rank, elem;  // elem: bytes per element (2 bf16, 4 fp32)
  const void* base;
  uint64_t dims[3];     // elements, innermost first (1 past the rank)
  uint64_t strides[3];  // bytes: elem (the element), then dims 1 and 2 (0 past the rank)
  uint32_t box[3];      // box[0] * elem = 128 bytes; 1 past the rank
};
static_assert(sizeof(MapFields) <= sizeof(TensorMap), "the emulation's tensor map fields must fit 128 bytes");

// How long a wait (mbarrier, named barrier) may see no progress before it fails the launch.
inline std::atomic<double> g_wait_timeout_s{20.0};
inline double set_wait_timeout(double seconds) { return g_wait_timeout_s.exchange(seconds); }

// ---- the mbarrier word ----
struct Bar {
  uint32_t pending, expected;
  int32_t tx;
  uint32_t parity;
};
constexpr uint64_t kMarker = uint64_t(1) << 62, kMarkerMask = uint64_t(3) << 62;
constexpr uint32_t kMaxCount = (1u << 20) - 1;
constexpr int32_t kMaxTx = (1 << 20) - 1;
inline uint64_t encode(const Bar& b) {
  return uint64_t(b.pending) | uint64_t(b.expected) << 20 | (uint64_t(uint32_t(b.tx)) & 0x1FFFFF) << 40 |
         uint64_t(b.parity & 1) << 61 | kMarker;
}
inline Bar decode(uint64_t w) {
  int32_t tx = int32_t(w >> 40 & 0x1FFFFF);
  if (tx & 0x100000) tx -= 0x200000;  // sign-extend 21 bits
  return Bar{uint32_t(w & 0xFFFFF), uint32_t(w >> 20 & 0xFFFFF), tx, uint32_t(w >> 61 & 1)};
}

// Where p lies, for messages: an offset into the dynamic shared memory, or the pointer.
inline std::string where(const void* p) {
  const auto base = reinterpret_cast<uintptr_t>(::moe::cuda::emu::dynamic_shared()), at = reinterpret_cast<uintptr_t>(p);
  std::ostringstream os;
  if (at >= base && at - base < ::moe::cuda::emu::dynamic_shared_bytes())
    os << "dynamic shared offset " << (at - base);
  else
    os << p;
  return os.str();
}

inline Bar load_bar(const char* op, uint64_t* bar) {
  const uint64_t w = std::atomic_ref<uint64_t>(*bar).load();
  if ((w & kMarkerMask) != kMarker)
    MOE_FAIL("cuda emulation", op, ": the mbarrier at ", where(bar),
             " is not initialized (mbar_init it, then fence_barrier_init and __syncthreads, before any use)");
  return decode(w);
}

inline void check_bar(const char* op, uint64_t* bar) {
  MOE_CHECK(reinterpret_cast<uintptr_t>(bar) % 8 == 0 && ::moe::cuda::emu::in_shared(bar, 8), "cuda emulation", op,
            ": mbarrier ", static_cast<const void*>(bar), " is not an 8-byte aligned word of the block's shared memory");
}

// Applies `change` (arrivals, tx bytes added) to the barrier atomically; completes the phase when
// nothing is pending.
inline void update(const char* op, uint64_t* bar, uint32_t arrivals, int64_t tx_delta) {
  std::atomic_ref<uint64_t> ref(*bar);
  uint64_t w = ref.load();
  for (;;) {
    if ((w & kMarkerMask) != kMarker) load_bar(op, bar);  // fails
    Bar b = decode(w);
    if (arrivals > b.pending)
      MOE_FAIL("cuda emulation", op, ": an arrival on the mbarrier at ", where(bar), " whose phase (parity ", b.parity,
               ") has no pending arrival left (init count ", b.expected, ", tx-count ", b.tx,
               "): more arrivals per phase than its count, or a phase re-armed before its copies landed");
    const int64_t tx = int64_t(b.tx) + tx_delta;
    if (tx > kMaxTx || tx < -kMaxTx)
      MOE_FAIL("cuda emulation", op, ": the tx-count of the mbarrier at ", where(bar), " would be ", tx,
               " bytes, outside +-(2^20 - 1)");
    b.pending -= arrivals;
    b.tx = int32_t(tx);
    if (b.pending == 0 && b.tx == 0) b = Bar{b.expected, b.expected, 0, b.parity ^ 1u};
    if (ref.compare_exchange_weak(w, encode(b))) return;
  }
}

// ---- the block's copies in flight and wgmma reads ----
struct PendingCopy {
  unsigned char* dst;
  uint64_t* bar;
  MapFields map;
  int coords[3];
  uint32_t bytes;
};
struct BlockAsync {
  std::mutex mutex;
  std::vector<PendingCopy> copies;  // issued, not landed
  std::atomic<int> ncopies{0};
  std::vector<std::atomic<uint32_t>> wgmma_reads;  // per 16-byte chunk of dynamic shared memory
  explicit BlockAsync(size_t chunks) : wgmma_reads(chunks) {}
};
inline BlockAsync& block_async() {
  static const char key = 0;
  return *static_cast<BlockAsync*>(::moe::cuda::emu::block_local(
      &key, [] { return static_cast<void*>(new BlockAsync(::moe::cuda::emu::dynamic_shared_bytes() / 16 + 1)); },
      [](void* p) { delete static_cast<BlockAsync*>(p); }));
}
inline size_t dynamic_offset(const void* p) {
  return size_t(reinterpret_cast<uintptr_t>(p) - reinterpret_cast<uintptr_t>(::moe::cuda::emu::dynamic_shared()));
}

// Whether any 16-byte chunk of [dst, dst + bytes) is read by an issued, unretired wgmma.
inline bool wgmma_reading(BlockAsync& a, const unsigned char* dst, uint32_t bytes) {
  const size_t first = dynamic_offset(dst) / 16;
  for (size_t c = first; c < first + bytes / 16; ++c)
    if (a.wgmma_reads[c].load() != 0) return true;
  return false;
}

// For emulation_wgmma.h: a warp's mma_async reading `chunks` (shared offset / 16, sorted) was
// issued (+1) or retired (-1).
inline void mark_wgmma_reads(const std::vector<uint32_t>& chunks, int delta) {
  BlockAsync& a = block_async();
  for (uint32_t c : chunks)
    if (c < a.wgmma_reads.size()) a.wgmma_reads[c].fetch_add(uint32_t(delta));
}
// For emulation_wgmma.h: fails when a TMA load into one of `chunks` has not landed.
inline void check_no_pending_load(const std::vector<uint32_t>& chunks) {
  BlockAsync& a = block_async();
  if (a.ncopies.load() == 0) return;
  std::lock_guard<std::mutex> lock(a.mutex);
  for (const PendingCopy& c : a.copies) {
    const uint32_t first = uint32_t(dynamic_offset(c.dst) / 16), last = first + c.bytes / 16;
    const auto it = std::lower_bound(chunks.begin(), chunks.end(), first);
    if (it != chunks.end() && *it < last)
      MOE_FAIL("cuda emulation", "wgmma.mma_async reads shared memory (", where(c.dst),
               ") whose TMA load has not landed: wait on the stage's full barrier (mbar_wait) first");
  }
}

// The shared-memory byte of element (e0, i1, i2) of a box (the 128B swizzle, 1024-byte aligned stage).
inline uint32_t box_offset(const MapFields& m, uint32_t e0, uint32_t i1, uint32_t i2) {
  const uint32_t row = i2 * m.box[1] + i1, byte = e0 * m.elem;
  return row * 128 + (((byte / 16) ^ (row % 8)) * 16) + byte % 16;
}

// Visits every element (e0, i1, i2) of a box at `coords` with its global byte offset from the map's
// base, or -1 when it lies outside the tensor.
// dim0: the innermost extent the copy reaches (a load: dims[0]; a store: store_inner_extent).
template <class F>
void for_box(const MapFields& m, const int* coords, uint64_t dim0, F f) {
  for (uint32_t i2 = 0; i2 < m.box[2]; ++i2)
    for (uint32_t i1 = 0; i1 < m.box[1]; ++i1)
      for (uint32_t e0 = 0; e0 < m.box[0]; ++e0) {
        const int64_t g[3] = {int64_t(coords[0]) + e0, int64_t(coords[1]) + i1, int64_t(coords[2]) + i2};
        const bool in = g[0] >= 0 && uint64_t(g[0]) < dim0 && g[1] >= 0 && uint64_t(g[1]) < m.dims[1] &&
                        g[2] >= 0 && uint64_t(g[2]) < m.dims[2];
        f(e0, i1, i2,
          in ? int64_t(uint64_t(g[0]) * m.elem + uint64_t(g[1]) * m.strides[1] + uint64_t(g[2]) * m.strides[2]) : -1);
      }
}

// Performs one copy: global memory is read now, out-of-range elements are zeros.
inline void perform(const PendingCopy& c) {
  const MapFields& m = c.map;
  const auto* base = static_cast<const unsigned char*>(m.base);
  for_box(m, c.coords, m.dims[0], [&](uint32_t e0, uint32_t i1, uint32_t i2, int64_t at) {
    unsigned char* dst = c.dst + box_offset(m, e0, i1, i2);
    if (at < 0)
      std::memset(dst, 0, m.elem);
    else
      std::memcpy(dst, base + at, m.elem);
  });
}

// Lands every queued copy that completes on `bar`.
inline void land_copies(uint64_t* bar) {
  BlockAsync& a = block_async();
  if (a.ncopies.load() == 0) return;
  std::vector<PendingCopy> mine;
  {
    std::lock_guard<std::mutex> lock(a.mutex);
    for (size_t i = 0; i < a.copies.size();) {
      if (a.copies[i].bar != bar) {
        ++i;
        continue;
      }
      const PendingCopy& c = a.copies[i];
      if (wgmma_reading(a, c.dst, c.bytes))
        MOE_FAIL("cuda emulation", "tma load into ", where(c.dst),
                 " lands while an issued wgmma still reads it: wait on the stage's empty barrier before refilling it");
      perform(c);
      mine.push_back(c);
      a.copies.erase(a.copies.begin() + std::ptrdiff_t(i));
      a.ncopies.fetch_sub(1);
    }
  }
  for (const PendingCopy& c : mine) update("tma load (complete_tx)", c.bar, 0, -int64_t(c.bytes));
}

// Spins (yield, then short sleeps) until done() holds; fails after the timeout without progress
// (progress() changing), or at once when another thread of the launch failed.
template <class Done, class Progress, class Describe>
void spin(const char* op, Done done, Progress progress, Describe describe) {
  using clock = std::chrono::steady_clock;
  auto last = progress();
  auto since = clock::now();
  for (int i = 0; !done(); ++i) {
    if (::moe::cuda::emu::launch_failed())
      MOE_FAIL("cuda emulation", op, ": abandoned (another thread of the launch failed)");
    if (i < 64)
      std::this_thread::yield();
    else
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    const auto now = progress();
    if (now != last) {
      last = now;
      since = clock::now();
    } else if (std::chrono::duration<double>(clock::now() - since).count() > g_wait_timeout_s.load()) {
      MOE_FAIL("cuda emulation", op, ": no progress for ", g_wait_timeout_s.load(), " s: ", describe());
    }
  }
}

// ---- the device calls ----
inline void mbar_init(uint64_t* bar, unsigned arrivals) {
  check_bar("tma::mbar_init", bar);
  MOE_CHECK(arrivals >= 1 && arrivals <= kMaxCount, "cuda emulation", "tma::mbar_init: arrival count ", arrivals,
            ", expected 1 .. 2^20 - 1");
  std::atomic_ref<uint64_t>(*bar).store(encode(Bar{arrivals, arrivals, 0, 0}));
}
inline void fence_barrier_init() { std::atomic_thread_fence(std::memory_order_seq_cst); }

inline void mbar_arrive(uint64_t* bar, unsigned tx_bytes) {
  const char* op = tx_bytes ? "tma::mbar_arrive_expect_tx" : "tma::mbar_arrive";
  check_bar(op, bar);
  update(op, bar, 1, int64_t(tx_bytes));
}

inline void mbar_wait(uint64_t* bar, unsigned parity) {
  check_bar("tma::mbar_wait", bar);
  MOE_CHECK(parity <= 1, "cuda emulation", "tma::mbar_wait: parity ", parity, ", expected 0 or 1");
  std::atomic_ref<uint64_t> ref(*bar);
  spin(
      "tma::mbar_wait",
      [&] {
        land_copies(bar);
        return load_bar("tma::mbar_wait", bar).parity != parity;
      },
      [&] { return ref.load(); },
      [&] {
        const Bar b = load_bar("tma::mbar_wait", bar);
        std::ostringstream os;
        os << "the mbarrier at " << where(bar) << " never completed its phase of parity " << parity << " (pending "
           << b.pending << " of " << b.expected << " arrivals, tx-count " << b.tx
           << " bytes): arrivals missing, or expect_tx bytes that no copy delivers";
        return os.str();
      });
}

inline const MapFields& map_fields(const char* op, const TensorMap* map) {
  const auto* f = reinterpret_cast<const MapFields*>(map->opaque);
  MOE_CHECK(f->magic == kMapMagic, "cuda emulation", op,
            ": the tensor map was not made by make_tensor_map_bf16 or make_tensor_map");
  return *f;
}

// The hardware faults ("an illegal instruction was encountered", at the barrier's waiters) when
// the innermost coordinate is not on a 16-byte boundary: seen on an H100 with c0 = 13 (bf16 loads).
inline void check_inner_coordinate(const char* op, const MapFields& m, int c0) {
  MOE_CHECK(int64_t(c0) * m.elem % 16 == 0, "cuda emulation", op, ": innermost coordinate ", c0, " is not a multiple of ",
            16 / m.elem, " elements (16 bytes): the GPU faults with an illegal instruction");
}

// A box's shared memory (a load's destination, a store's source, `what`): inside the dynamic
// shared memory, 1024-byte aligned.
inline void check_box_smem(const char* op, const char* what, const void* p, uint32_t bytes) {
  const size_t off = dynamic_offset(p);
  MOE_CHECK(reinterpret_cast<uintptr_t>(p) >= reinterpret_cast<uintptr_t>(::moe::cuda::emu::dynamic_shared()) &&
                off + bytes <= ::moe::cuda::emu::dynamic_shared_bytes(),
            "cuda emulation", op, ": ", what, " ", p, " + ", bytes,
            " bytes is not inside the block's dynamic shared memory (", ::moe::cuda::emu::dynamic_shared_bytes(),
            " bytes)");
  MOE_CHECK(off % 1024 == 0, "cuda emulation", op, ": ", what, " at dynamic shared offset ", off,
            " is not 1024-byte aligned (the 128B swizzle's atom)");
}

inline void load(void* smem, const TensorMap* map, uint64_t* bar, int rank, const int* coords) {
  const char* op = rank == 2 ? "tma::load_2d" : "tma::load_3d";
  const MapFields& m = map_fields(op, map);
  MOE_CHECK(int(m.rank) == rank, "cuda emulation", op, ": the tensor map has rank ", m.rank);
  check_inner_coordinate(op, m, coords[0]);
  check_bar(op, bar);
  load_bar(op, bar);
  const uint32_t bytes = m.box[0] * m.box[1] * m.box[2] * m.elem;
  auto* dst = static_cast<unsigned char*>(smem);
  check_box_smem(op, "destination", dst, bytes);
  BlockAsync& a = block_async();
  std::lock_guard<std::mutex> lock(a.mutex);
  if (wgmma_reading(a, dst, bytes))
    MOE_FAIL("cuda emulation", op, " into ", where(dst),
             " while an issued wgmma still reads it: wait on the stage's empty barrier before refilling it");
  for (const PendingCopy& c : a.copies)
    if (c.dst < dst + bytes && dst < c.dst + c.bytes)
      MOE_FAIL("cuda emulation", op, " into ", where(dst), " while an earlier load into ", where(c.dst),
               " has not landed (nobody waited on its barrier): a stage refilled before its consumers were done");
  std::memset(dst, 0xFF, bytes);  // undefined until the copy completes: NaN for an early reader
  a.copies.push_back(PendingCopy{dst, bar, m, {coords[0], coords[1], coords[2]}, bytes});
  a.ncopies.fetch_add(1);
}

inline void prefetch_tensor_map(const TensorMap* map) { map_fields("tma::prefetch_tensor_map", map); }

// ---- bulk tensor stores (shared -> global) ----
// The async proxy's view of the dynamic shared memory, for the fence check: per 16-byte chunk the
// bytes a store last read there and the block's fence count then (kNever: no store read it yet).
// A store whose source chunk changed since then, with no fence_proxy_async_shared by any thread of
// the block in between, read bytes the async proxy need not see: it fails. (The count is the
// block's, not the writer's: a fence by another thread masks a missing one; the tests use one warp.)
struct PendingStore {
  const unsigned char* src;
  size_t offset;  // of src in the dynamic shared memory
  MapFields map;
  int coords[3];
  std::vector<unsigned char> issued;  // the source's bytes at the issue
};
struct ThreadStores {
  std::vector<PendingStore> open;                  // issued, not yet committed
  std::vector<std::vector<PendingStore>> groups;   // committed bulk groups, oldest first
};
struct BlockStores {
  static constexpr uint32_t kNever = ~0u;
  std::mutex mutex;
  std::vector<ThreadStores> threads;
  std::vector<unsigned char> seen;  // the async view, dynamic shared bytes
  std::vector<uint32_t> seen_at;    // per 16-byte chunk: the fence count when `seen` was taken
  std::atomic<uint32_t> fences{0};
  BlockStores()
      : threads(blockDim.x * blockDim.y * blockDim.z),
        seen(::moe::cuda::emu::dynamic_shared_bytes()),
        seen_at(::moe::cuda::emu::dynamic_shared_bytes() / 16 + 1, kNever) {}
};
// Lands (at the block's end) a store its thread never waited for: as poison (0xFF bytes), with a
// line on stderr, since the GPU may read the staging after the block's shared memory moved on.
inline void land_unwaited(const PendingStore& st);
inline void destroy_block_stores(void* p) {
  auto* b = static_cast<BlockStores*>(p);
  for (ThreadStores& t : b->threads) {
    for (const auto& g : t.groups)
      for (const PendingStore& st : g) land_unwaited(st);
    for (const PendingStore& st : t.open) land_unwaited(st);
  }
  delete b;
}
inline BlockStores& block_stores() {
  static const char key = 0;
  return *static_cast<BlockStores*>(
      ::moe::cuda::emu::block_local(&key, [] { return static_cast<void*>(new BlockStores); }, destroy_block_stores));
}
inline ThreadStores& thread_stores(BlockStores& b) {
  return b.threads[threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)];
}

inline void fence_proxy_async_shared() {
  std::atomic_thread_fence(std::memory_order_seq_cst);
  block_stores().fences.fetch_add(1);
}

// How far a store reaches along the innermost dimension: dims[0] rounded up to whole 16-byte
// chunks (an H100 writes the last chunk whole; the row stride, a multiple of 16 bytes, holds it).
inline uint64_t store_inner_extent(const MapFields& m) { return (m.dims[0] * m.elem + 15) / 16 * 16 / m.elem; }

// Writes the box's in-range elements from `bytes` (the box's shared-memory image); out-of-range
// parts are clipped (not written), as the hardware clips them (store_inner_extent).
inline void write_box(const PendingStore& st, const unsigned char* bytes) {
  auto* base = static_cast<unsigned char*>(const_cast<void*>(st.map.base));
  for_box(st.map, st.coords, store_inner_extent(st.map), [&](uint32_t e0, uint32_t i1, uint32_t i2, int64_t at) {
    if (at >= 0) std::memcpy(base + at, bytes + box_offset(st.map, e0, i1, i2), st.map.elem);
  });
}
inline void land_unwaited(const PendingStore& st) {
  // (Outside the block's threads: no where(), which asks the running block.)
  std::fprintf(stderr,
               "cuda emulation: a tma store from dynamic shared offset %zu was never waited for "
               "(cp.async.bulk.wait_group before the block ends): it lands as 0xFF bytes\n",
               st.offset);
  const std::vector<unsigned char> poison(st.issued.size(), 0xFF);
  write_box(st, poison.data());
}

inline void store_2d(const TensorMap* map, const void* smem, const int* coords) {
  const char* op = "tma::store_2d";
  const MapFields& m = map_fields(op, map);
  MOE_CHECK(m.rank == 2, "cuda emulation", op, ": the tensor map has rank ", m.rank);
  check_inner_coordinate(op, m, coords[0]);
  MOE_CHECK(coords[0] >= 0 && coords[1] >= 0, "cuda emulation", op, ": coordinates (", coords[0], ", ", coords[1],
            ") start the box before the tensor: a store at a negative coordinate faults the GPU with an illegal "
            "instruction (loads may start there; stores may not)");
  const uint32_t bytes = m.box[0] * m.box[1] * m.box[2] * m.elem;
  const auto* src = static_cast<const unsigned char*>(smem);
  check_box_smem(op, "source", src, bytes);
  const size_t off = dynamic_offset(src);
  BlockStores& b = block_stores();
  std::lock_guard<std::mutex> lock(b.mutex);
  const uint32_t fences = b.fences.load();
  for (size_t c = off / 16; c < (off + bytes) / 16; ++c) {
    const bool changed = std::memcmp(&b.seen[c * 16], src + (c - off / 16) * 16, 16) != 0;
    if (b.seen_at[c] == BlockStores::kNever ? fences == 0 : changed && b.seen_at[c] == fences)
      MOE_FAIL("cuda emulation", op, " from ", where(src), ": shared memory at dynamic shared offset ", c * 16,
               " was written with no fence_proxy_async_shared since (fence.proxy.async.shared::cta between the "
               "writes and the store, else the copy engine may read stale bytes)");
    std::memcpy(&b.seen[c * 16], src + (c - off / 16) * 16, 16);
    b.seen_at[c] = fences;
  }
  thread_stores(b).open.push_back(
      PendingStore{src, off, m, {coords[0], coords[1], coords[2]}, std::vector<unsigned char>(src, src + bytes)});
}

inline void bulk_commit_group() {
  BlockStores& b = block_stores();
  std::lock_guard<std::mutex> lock(b.mutex);
  ThreadStores& t = thread_stores(b);
  t.groups.push_back(std::move(t.open));
  t.open.clear();
}

// wait_group(.read) N: the thread's committed groups but the newest N are performed now: their
// sources are read (and must still hold what they held at the issue: a kernel that refilled the
// staging before this wait fails) and written to global memory (also for .read, which on the GPU
// only promises the read: a kernel reading its own output after .read alone passes here).
inline void bulk_wait_group(const char* op, int pending) {
  BlockStores& b = block_stores();
  std::vector<std::vector<PendingStore>> done;
  {
    std::lock_guard<std::mutex> lock(b.mutex);
    ThreadStores& t = thread_stores(b);
    while (int(t.groups.size()) > pending) {
      done.push_back(std::move(t.groups.front()));
      t.groups.erase(t.groups.begin());
    }
  }
  for (const auto& g : done)
    for (const PendingStore& st : g) {
      if (std::memcmp(st.src, st.issued.data(), st.issued.size()) != 0)
        MOE_FAIL("cuda emulation", op, ": the source of a tma store at ", where(st.src),
                 " was overwritten before the store read it (cp.async.bulk.wait_group.read before reusing the "
                 "staging)");
      write_box(st, st.issued.data());
    }
}

// The thread's setmaxnreg calls in this block and its last count (0: none yet).
struct RegState {
  uint64_t block = ~uint64_t(0);
  uint32_t calls = 0;
  int regs = 0;
};
inline thread_local RegState t_regs;
// Per warp of the block: (call number << 32) | (count << 1) | inc of its latest setmaxnreg.
struct RegSlots {
  std::atomic<uint64_t> slot[32] = {};
};

inline void setmaxnreg(const char* op, int regs, bool inc) {
  const unsigned nthreads = blockDim.x * blockDim.y * blockDim.z;
  const unsigned tid = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  MOE_CHECK((tid / 128 + 1) * 128 <= nthreads, "cuda emulation", op, ": thread ", tid,
            " is not in a complete warpgroup (block of ", nthreads, " threads)");
  const uint64_t value = uint64_t(regs) << 1 | uint64_t(inc);
  ::moe::cuda::emu::warp_collective(op, value);
  const uint64_t block = ::moe::cuda::emu::block_serial();
  if (t_regs.block != block) t_regs = RegState{block, 0, 0};
  if (t_regs.regs != 0)
    MOE_CHECK(inc ? regs >= t_regs.regs : regs <= t_regs.regs, "cuda emulation", op, "(", regs, ") after ",
              t_regs.regs, ": .inc must not lower the count, .dec not raise it");
  t_regs.regs = regs;
  // .sync.aligned over the warpgroup: its 4 warps meet here with the same count (a warp that has
  // exited, or is elsewhere, leaves its slot stale).
  static const char key = 0;
  auto& slots = *static_cast<RegSlots*>(::moe::cuda::emu::block_local(
      &key, [] { return static_cast<void*>(new RegSlots); }, [](void* p) { delete static_cast<RegSlots*>(p); }));
  const uint64_t mine = uint64_t(++t_regs.calls) << 32 | value;
  if (tid % 32 == 0) slots.slot[tid / 32].store(mine);
  ::moe::cuda::emu::warpgroup_sync(op);
  for (unsigned w = tid / 128 * 4; w < tid / 128 * 4 + 4; ++w)
    if (slots.slot[w].load() != mine)
      MOE_FAIL("cuda emulation", op, "(", regs, ") by warp ", tid / 32, ": warp ", w,
               " of its warpgroup did not execute the same setmaxnreg (it must be executed by the whole warpgroup)");
  // Every slot is read before any warp's next setmaxnreg writes it.
  ::moe::cuda::emu::warpgroup_sync(op);
}

// Named barriers 1..15 of the block.
struct NamedBarriers {
  std::mutex mutex;
  uint32_t arrived[16] = {}, threads[16] = {};
  std::atomic<uint32_t> generation[16] = {};
};
inline void named_barrier_sync(int id, int threads) {
  const int nthreads = int(blockDim.x * blockDim.y * blockDim.z);
  MOE_CHECK(id >= 1 && id <= 15, "cuda emulation", "tma::named_barrier_sync: id ", id,
            ", expected 1 .. 15 (0 is __syncthreads')");
  MOE_CHECK(threads >= 32 && threads % 32 == 0 && threads <= nthreads, "cuda emulation",
            "tma::named_barrier_sync: ", threads, " threads, expected a multiple of 32 up to the block's ", nthreads);
  ::moe::cuda::emu::warp_collective("tma::named_barrier_sync", uint64_t(id) << 32 | uint32_t(threads));
  static const char key = 0;
  auto& nb = *static_cast<NamedBarriers*>(::moe::cuda::emu::block_local(
      &key, [] { return static_cast<void*>(new NamedBarriers); }, [](void* p) { delete static_cast<NamedBarriers*>(p); }));
  uint32_t gen = 0;
  {
    std::lock_guard<std::mutex> lock(nb.mutex);
    gen = nb.generation[id].load();
    if (nb.arrived[id] == 0) nb.threads[id] = uint32_t(threads);
    if (nb.threads[id] != uint32_t(threads))
      MOE_FAIL("cuda emulation", "tma::named_barrier_sync: barrier ", id, " is waited on with ", threads,
               " threads and with ", nb.threads[id], " in one phase");
    if (++nb.arrived[id] == uint32_t(threads)) {
      nb.arrived[id] = 0;
      nb.generation[id].fetch_add(1);
      return;
    }
  }
  spin(
      "tma::named_barrier_sync", [&] { return nb.generation[id].load() != gen; },
      [&] {
        std::lock_guard<std::mutex> lock(nb.mutex);
        return nb.arrived[id];
      },
      [&] {
        std::lock_guard<std::mutex> lock(nb.mutex);
        std::ostringstream os;
        os << "named barrier " << id << " over " << threads << " threads: only " << nb.arrived[id] << " arrived";
        return os.str();
      });
}

inline bool elect_one() {
  ::moe::cuda::emu::warp_collective("tma::elect_one", 0);
  return ::moe::cuda::emu::lane_id() == 0;
}

}  // namespace moe::cuda::emu_tma

#endif  // MOE_CUDA_EMULATION
