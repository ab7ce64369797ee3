// The emulation runtime: a grid runs block by block, each block's threads as real host threads
// meeting at real barriers (block-wide for __syncthreads, per warp for shuffles and votes).
#ifdef MOE_CUDA_EMULATION
#include "core/cuda/emulation.h"

#include <linux/futex.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "core/error.h"

thread_local dim3 threadIdx;
thread_local dim3 blockIdx;
thread_local dim3 blockDim;
thread_local dim3 gridDim;

namespace moe::cuda::emu {
namespace {

constexpr unsigned kMaxThreadsPerBlock = 1024;
// Shared memory per block: 48 KiB of static, and of static + dynamic without an opt-in; with one,
// the target's limit (sm_80 163 KiB, sm_90 227 KiB: cudaDevAttrMaxSharedMemoryPerBlockOptin).
constexpr size_t kDefaultSharedBytes = 48 * 1024;
size_t opt_in_limit(int sm) { return sm >= 90 ? 227 * 1024 : 163 * 1024; }
std::atomic<int> g_target_sm{80};

// The opt-ins (allow_dynamic_shared) by kernel: the last value set, as the GPU keeps it.
std::mutex g_opt_in_mutex;
std::unordered_map<const void*, size_t> g_opt_ins;
size_t opt_in_of(const void* kernel) {
  std::lock_guard<std::mutex> lock(g_opt_in_mutex);
  auto it = g_opt_ins.find(kernel);
  return it == g_opt_ins.end() ? 0 : it->second;
}
constexpr uint64_t kPoisonBits = ~uint64_t(0);
constexpr unsigned kFullWarp = 0xffffffffu;
// Numbers the blocks run by this process (block_serial).
std::atomic<uint64_t> g_block_serial{0};

// ---- waits ----
// A launch runs up to 1024 host threads on a few cores: a waiter that spins takes the core from
// the threads it waits for. So a wait yields the core a few times (the last arrivals are usually
// runnable already) and then sleeps on a futex until the 32-bit word changes. Measured on 2 cores
// (emulated norm, Sinkhorn and attention tests): sleeping at once was 2.5x slower than this, 64
// yields the same as 4.
void sleep_while(const std::atomic<uint32_t>& word, uint32_t seen) {
  for (int i = 0; i < 4 && word.load(std::memory_order_acquire) == seen; ++i) std::this_thread::yield();
  while (word.load(std::memory_order_acquire) == seen)
    syscall(SYS_futex, reinterpret_cast<const uint32_t*>(&word), FUTEX_WAIT_PRIVATE, seen, nullptr, nullptr, 0);
}
void wake(std::atomic<uint32_t>& word, int n) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAKE_PRIVATE, n, nullptr, nullptr, 0);
}

// The __syncthreads, warp and warpgroup barriers of one block share one lock and count, in
// WaitMonitor, the threads asleep at any of them; the block's live threads are the __syncthreads
// barrier's (barriers.front()). When every live thread is asleep, no barrier can complete (the
// last arrival at a complete one releases it instead of sleeping): a deadlock, on which a GPU
// hangs or worse (a warp op some lanes skip while the others wait at __syncthreads, say). The
// launch then fails with one line naming the barriers and how many wait at each, instead of
// hanging. Threads spinning on an mbarrier or a named barrier are not asleep here (their own
// timeouts cover them), so they never make a deadlock out of a wait.
class SleepingBarrier;
struct WaitMonitor {
  std::mutex mutex;
  unsigned asleep = 0;   // live threads asleep at one of `barriers`
  std::string deadlock;  // set once one is found: what every waiter then fails with
  std::vector<SleepingBarrier*> barriers;  // the __syncthreads barrier first
  const std::atomic<uint64_t>* syncthreads_site = nullptr;  // BlockState::barrier_site
  void check_deadlock();  // under `mutex`
};

// A barrier over a set of threads that may shrink (arrive_and_drop: a thread that left the block),
// as std::barrier: `phase_end` runs once per phase, in the arrival or drop that completes it,
// before any waiter is released. `name` says where its threads wait (for the deadlock line); a
// barrier without a monitor (the launch's end of block) has a lock of its own and no deadlock check.
class SleepingBarrier {
 public:
  SleepingBarrier(unsigned count, std::string name, WaitMonitor* monitor, std::function<void()> phase_end = {})
      : name_(std::move(name)), monitor_(monitor), phase_end_(std::move(phase_end)), live_(count) {}
  // `op` (may be null) prefixes the deadlock's line in the thread that throws it.
  void arrive_and_wait(const char* op = nullptr) {
    std::unique_lock<std::mutex> lock(mutex());
    fail_if_deadlocked(op);
    const uint64_t phase = phase_;
    if (++arrived_ == live_) return release(arrived_ - 1);
    if (monitor_) {
      ++monitor_->asleep;
      monitor_->check_deadlock();  // may break every barrier's phase, this one's included
    }
    while (phase_ == phase && !deadlocked()) {
      const uint32_t word = word_.load(std::memory_order_relaxed);
      lock.unlock();
      sleep_while(word_, word);  // a release or a deadlock bumps the word under the lock
      lock.lock();
    }
    if (phase_ == phase) fail_if_deadlocked(op);  // woken by a deadlock, not by a release
  }
  // A thread that left the block. The __syncthreads barrier's drop, a leaving thread's last, may
  // leave every remaining live thread asleep: a deadlock.
  void arrive_and_drop() {
    std::lock_guard<std::mutex> lock(mutex());
    --live_;
    if (!deadlocked() && arrived_ > 0 && arrived_ == live_) release(arrived_);
    if (monitor_) monitor_->check_deadlock();
  }
  unsigned live() const { return live_; }
  // Under the monitor's lock: "3 of 32 at warp 1's warp op or __syncwarp" ("" when nobody waits).
  std::string waiting() const {
    return arrived_ == 0 ? "" : std::to_string(arrived_) + " of " + std::to_string(live_) + " at " + name_;
  }
  // Under the monitor's lock, once a deadlock is found: wakes every waiter to fail.
  void wake_to_fail() {
    word_.fetch_add(1, std::memory_order_release);
    wake(word_, INT_MAX);
  }

 private:
  std::mutex& mutex() { return monitor_ ? monitor_->mutex : own_mutex_; }
  bool deadlocked() const { return monitor_ && !monitor_->deadlock.empty(); }
  void fail_if_deadlocked(const char* op) const {
    if (deadlocked()) MOE_FAIL("cuda emulation", op ? op : "", op ? ": " : "", monitor_->deadlock);
  }
  void release(unsigned sleepers) {
    if (phase_end_) phase_end_();
    if (monitor_) monitor_->asleep -= sleepers;
    arrived_ = 0;
    ++phase_;
    word_.fetch_add(1, std::memory_order_release);
    wake(word_, INT_MAX);
  }
  std::string name_;
  WaitMonitor* monitor_;
  std::function<void()> phase_end_;
  std::mutex own_mutex_;
  unsigned live_, arrived_ = 0;
  uint64_t phase_ = 0;              // completed phases (under the lock)
  std::atomic<uint32_t> word_{0};  // the futex word sleepers wait on
};

void WaitMonitor::check_deadlock() {
  const unsigned live = barriers.front()->live();
  if (!deadlock.empty() || live == 0 || asleep < live) return;
  std::string d = "deadlock: all " + std::to_string(live) + " live threads of the block are asleep at barriers that "
                  "cannot complete (";
  bool first = true;
  for (const SleepingBarrier* b : barriers) {
    std::string w = b->waiting();
    if (w.empty()) continue;
    if (b == barriers.front() && syncthreads_site && syncthreads_site->load() != 0)
      w += " (line " + std::to_string(syncthreads_site->load() >> 32) + ")";
    d += (first ? "" : "; ") + w;
    first = false;
  }
  deadlock = d + "): a __syncthreads, warp op, __syncwarp or warpgroup-wide instruction that some of the threads "
                 "it waits for skip";
  for (SleepingBarrier* b : barriers) b->wake_to_fail();
}

struct AlignedFree {
  void operator()(unsigned char* p) const { ::operator delete[](p, std::align_val_t(64)); }
};
using Bytes = std::unique_ptr<unsigned char[], AlignedFree>;
Bytes alloc_bytes(size_t n) {
  auto* p = static_cast<unsigned char*>(::operator new[](n ? n : 1, std::align_val_t(64)));
  std::memset(p, 0xFF, n);
  return Bytes(p);
}

// One lane's contribution to a warp op: the value and which of the lane's warp ops it was.
struct Slot {
  uint64_t bits = kPoisonBits;
  uint64_t op = ~uint64_t(0);
};

struct SharedBuffer {
  const void* key;
  size_t bytes;
  Bytes data;
};

// A feature's block-local state (block_local): freed when the block ends.
struct BlockLocal {
  const void* key;
  void* data;
  void (*destroy)(void*);
};

// State of the block being run; rebuilt between blocks while every worker waits.
struct BlockState {
  unsigned nthreads = 0, nwarps = 0;
  WaitMonitor waits;  // of block_barrier, warp_barriers and warpgroup_barriers
  std::unique_ptr<SleepingBarrier> block_barrier;
  // The call site of the current __syncthreads phase: set by its first arrival (0: none yet).
  std::atomic<uint64_t> barrier_site{0};
  std::vector<std::unique_ptr<SleepingBarrier>> warp_barriers;
  std::vector<std::unique_ptr<SleepingBarrier>> warpgroup_barriers;  // complete warpgroups only
  std::vector<Slot> slots;  // per warp 2 x 32 exchange slots (double-buffered by op parity)
  std::mutex shared_mutex;
  std::vector<SharedBuffer> statics;
  size_t static_bytes = 0;
  Bytes dynamic;
  size_t dynamic_bytes = 0;
  size_t opt_in = 0;  // the kernel's allow_dynamic_shared bytes (0: none)
  uint64_t serial = 0;  // block_serial()
  const char* kernel_name = "";
  std::mutex error_mutex;
  std::string error;  // first failure of any thread in the launch
  std::atomic<bool> failed{false};
  std::vector<BlockLocal> locals;  // under shared_mutex

  ~BlockState() { free_locals(); }
  void free_locals() {
    for (BlockLocal& l : locals) l.destroy(l.data);
    locals.clear();
  }
  void reset() {
    free_locals();
    // The phase's end forgets its call site before anyone leaves for the next phase.
    block_barrier = std::make_unique<SleepingBarrier>(nthreads, "__syncthreads", &waits,
                                                      [this] { barrier_site.store(0); });
    barrier_site = 0;
    warp_barriers.clear();
    for (unsigned w = 0; w < nwarps; ++w) {
      unsigned lanes = std::min(32u, nthreads - w * 32);
      warp_barriers.push_back(std::make_unique<SleepingBarrier>(
          lanes, "warp " + std::to_string(w) + "'s warp op or __syncwarp", &waits));
    }
    warpgroup_barriers.clear();
    for (unsigned g = 0; g < nthreads / 128; ++g)
      warpgroup_barriers.push_back(std::make_unique<SleepingBarrier>(
          128, "warpgroup " + std::to_string(g) + "'s warpgroup-wide instruction (wgmma, setmaxnreg)", &waits));
    // The monitor watches the barriers just made (all of them: a deadlock must wake every waiter).
    waits.asleep = 0;
    waits.deadlock.clear();
    waits.syncthreads_site = &barrier_site;
    waits.barriers = {block_barrier.get()};  // first: check_deadlock names its line
    for (auto& w : warp_barriers) waits.barriers.push_back(w.get());
    for (auto& w : warpgroup_barriers) waits.barriers.push_back(w.get());
    slots.assign(size_t(nwarps) * 64, Slot{});
    statics.clear();
    static_bytes = 0;
    serial = g_block_serial.fetch_add(1) + 1;
    if (dynamic_bytes) std::memset(dynamic.get(), 0xFF, dynamic_bytes);
  }
  void fail(const std::string& what) {
    std::lock_guard<std::mutex> lock(error_mutex);
    if (error.empty()) error = what;
    failed = true;
  }
};

struct ThreadContext {
  BlockState* block = nullptr;
  unsigned tid = 0, warp = 0, lane = 0;
  uint64_t warp_ops = 0;  // warp ops this lane has done in this block
};
thread_local ThreadContext t_ctx;

BlockState& current_block() {
  if (!t_ctx.block) MOE_FAIL("cuda emulation", "a device function was called outside a kernel launch");
  return *t_ctx.block;
}

// A thread that leaves the kernel (return or failure) stops counting at every barrier, as an
// exited GPU thread does; it writes no more exchange slots, so later warp ops see it as absent.
void leave_block() {
  BlockState& b = *t_ctx.block;
  b.warp_barriers[t_ctx.warp]->arrive_and_drop();
  if (t_ctx.tid / 128 < b.warpgroup_barriers.size()) b.warpgroup_barriers[t_ctx.tid / 128]->arrive_and_drop();
  b.block_barrier->arrive_and_drop();  // last: its drop is where a deadlock of the others shows
}

// The host threads that run the launches' GPU threads: started once and reused by every launch
// (starting up to 1024 threads per launch cost more than most emulated kernels), one launch at a
// time. Pool thread t runs GPU thread t of the block.
class ThreadPool {
 public:
  static ThreadPool& get() {
    static std::once_flag once;
    std::call_once(once, [] {
      g_pool = new ThreadPool;
      // A forked child (a gtest death test) has only the forking thread: it starts a pool of its own.
      pthread_atfork(nullptr, nullptr, [] { g_pool = new ThreadPool; });
    });
    return *g_pool;
  }
  // Runs job(t) for t in [0, n) on n pool threads; returns when every one has returned.
  void run(unsigned n, const std::function<void(unsigned)>& job) {
    MOE_CHECK(!t_pool_thread, "cuda emulation", "a kernel launch from inside a kernel (dynamic parallelism) is not emulated");
    std::lock_guard<std::mutex> lock(launch_mutex_);
    while (workers_.size() < n) {
      auto w = std::make_unique<Worker>();
      Worker* raw = w.get();
      const auto index = unsigned(workers_.size());
      workers_.push_back(std::move(w));
      std::thread([this, raw, index] { work(*raw, index); }).detach();  // the pool is never destroyed
    }
    job_ = &job;
    running_.store(n, std::memory_order_release);
    for (unsigned t = 0; t < n; ++t) {
      workers_[t]->go.fetch_add(1, std::memory_order_release);
      wake(workers_[t]->go, 1);
    }
    for (uint32_t left; (left = running_.load(std::memory_order_acquire)) != 0;) sleep_while(running_, left);
    job_ = nullptr;
  }

 private:
  struct Worker {
    std::atomic<uint32_t> go{0};  // bumped once per launch this thread takes part in
  };
  void work(Worker& w, unsigned index) {
    t_pool_thread = true;
    for (uint32_t seen = 0;;) {
      sleep_while(w.go, seen);
      seen = w.go.load(std::memory_order_acquire);
      (*job_)(index);
      if (running_.fetch_sub(1, std::memory_order_acq_rel) == 1) wake(running_, 1);
    }
  }
  static inline ThreadPool* g_pool = nullptr;  // leaked: detached threads use it until the process ends
  static inline thread_local bool t_pool_thread = false;
  std::mutex launch_mutex_;
  std::vector<std::unique_ptr<Worker>> workers_;
  const std::function<void(unsigned)>* job_ = nullptr;
  std::atomic<uint32_t> running_{0};
};

}  // namespace

void allow_dynamic_shared(const char* op, const void* kernel, size_t bytes) {
  const int sm = g_target_sm.load();
  // cudaFuncSetAttribute refuses more than the target allows (static shared memory is checked
  // at the launch, when the emulation sees it).
  MOE_CHECK(bytes <= opt_in_limit(sm), op, "cudaFuncSetAttribute(", bytes,
            " bytes of dynamic shared memory): above sm_", sm, "'s ", opt_in_limit(sm), "-byte limit per block");
  std::lock_guard<std::mutex> lock(g_opt_in_mutex);
  g_opt_ins[kernel] = bytes;
}

int set_target_sm(int sm) {
  MOE_CHECK(sm == 80 || sm == 90, "cuda emulation", "set_target_sm(", sm, "): expected 80 or 90");
  return g_target_sm.exchange(sm);
}

void run_grid(const char* name, const void* kernel, dim3 grid, dim3 block, size_t dynamic_shared_bytes,
              const std::function<void()>& body) {
  const uint64_t nthreads = uint64_t(block.x) * block.y * block.z;
  const uint64_t nblocks = uint64_t(grid.x) * grid.y * grid.z;
  MOE_CHECK(nthreads >= 1 && nthreads <= kMaxThreadsPerBlock && block.z <= 64, "cuda launch",
            "kernel ", name, ": invalid block (", block.x, ", ", block.y, ", ", block.z,
            "), expected 1..1024 threads with z <= 64");
  MOE_CHECK(nblocks >= 1 && grid.x <= 0x7fffffffu && grid.y <= 65535 && grid.z <= 65535, "cuda launch", "kernel ",
            name, ": invalid grid (", grid.x, ", ", grid.y, ", ", grid.z,
            "), expected every dimension >= 1, x < 2^31, y and z <= 65535");
  const size_t opt_in = opt_in_of(kernel);
  MOE_CHECK(dynamic_shared_bytes <= (opt_in ? opt_in : kDefaultSharedBytes), "cuda launch", "kernel ", name, ": ",
            dynamic_shared_bytes, " bytes of dynamic shared memory",
            opt_in ? " exceed its opt-in of " + std::to_string(opt_in) + " bytes"
                   : std::string(" need allow_dynamic_shared (launch.h) first: above 48 KiB without an opt-in"));

  BlockState state;
  state.kernel_name = name;
  state.opt_in = opt_in;
  state.nthreads = unsigned(nthreads);
  state.nwarps = unsigned((nthreads + 31) / 32);
  state.dynamic_bytes = dynamic_shared_bytes;
  state.dynamic = alloc_bytes(dynamic_shared_bytes);
  state.reset();
  SleepingBarrier end_of_block{unsigned(nthreads), "the end of the block", nullptr, [&state] {
                                  try {
                                    state.reset();
                                  } catch (const std::exception& e) {
                                    std::fprintf(stderr, "cuda emulation: cannot set up the next block: %s\n", e.what());
                                    std::abort();
                                  }
                                }};

  const std::function<void(unsigned)> worker = [&](unsigned tid) {
    threadIdx = dim3(tid % block.x, tid / block.x % block.y, tid / (block.x * block.y));
    blockDim = block;
    gridDim = grid;
    for (uint64_t b = 0; b < nblocks; ++b) {
      blockIdx = dim3(unsigned(b % grid.x), unsigned(b / grid.x % grid.y), unsigned(b / (uint64_t(grid.x) * grid.y)));
      t_ctx = ThreadContext{&state, tid, tid / 32, tid % 32, 0};
      try {
        body();
      } catch (const std::exception& e) {
        state.fail(e.what());
      } catch (...) {
        state.fail("unknown exception");
      }
      leave_block();
      t_ctx = ThreadContext{};
      end_of_block.arrive_and_wait();
    }
  };
  ThreadPool::get().run(unsigned(nthreads), worker);
  if (!state.error.empty()) MOE_FAIL("cuda kernel", name, ": ", state.error);
}

void syncthreads(const std::source_location& site) {
  BlockState& b = current_block();
  // Line and column identify the call site (a kernel's threads run one translation unit's code).
  const uint64_t key = uint64_t(site.line()) << 32 | site.column();
  uint64_t first = 0;
  if (!b.barrier_site.compare_exchange_strong(first, key) && first != key) {
    b.fail(std::string("divergent __syncthreads: threads of one block wait at ") + site.file_name() + ":" +
           std::to_string(site.line()) + " and at line " + std::to_string(first >> 32) +
           " at once (a barrier in a branch that not every thread of the block takes)");
  }
  b.block_barrier->arrive_and_wait("__syncthreads");
}

void syncwarp(unsigned mask) { current_block().warp_barriers[t_ctx.warp]->arrive_and_wait(); }

void warpgroup_sync(const char* what) {
  BlockState& b = current_block();
  if (t_ctx.tid / 128 >= b.warpgroup_barriers.size())
    MOE_FAIL("cuda emulation", what, ": thread ", t_ctx.tid, " is not in a complete warpgroup (block of ", b.nthreads,
             " threads)");
  b.warpgroup_barriers[t_ctx.tid / 128]->arrive_and_wait(what);
}

unsigned lane_id() {
  current_block();
  return t_ctx.lane;
}

// One barrier per warp op. Op i uses slot buffer i % 2, so op i+1 cannot overwrite what a slow
// lane still reads from op i, and no lane can write op i+2 before all have left op i (it must pass
// op i+1's barrier first). A slot counts only if it was written by this same op (its op number
// matches): lanes that exited or do not exist read back as poison and are not live.
void warp_exchange(unsigned mask, uint64_t mine, uint64_t (&all)[32], unsigned& live_lanes) {
  BlockState& b = current_block();
  const uint64_t op = t_ctx.warp_ops++;
  Slot* slots = b.slots.data() + size_t(t_ctx.warp) * 64 + 32 * (op & 1);
  slots[t_ctx.lane] = Slot{mine, op};
  b.warp_barriers[t_ctx.warp]->arrive_and_wait();
  live_lanes = 0;
  for (int l = 0; l < 32; ++l) {
    const bool here = slots[l].op == op;
    all[l] = here ? slots[l].bits : kPoisonBits;
    live_lanes |= unsigned(here) << l;
  }
  // Every lane checks the same condition, so either all lanes throw (and drop out) or none.
  if ((mask & live_lanes) != live_lanes)
    MOE_FAIL("cuda emulation", "warp op with mask 0x", std::hex, mask, " while lanes 0x", live_lanes,
             " are live: the emulation needs every live lane of the warp in the mask");
}

// A wmma call is collective over the full warp: every lane checks the same exchanged values, so
// either all throw or none does.
void warp_collective(const char* what, uint64_t uniform) {
  uint64_t all[32];
  unsigned live = 0;
  warp_exchange(kFullWarp, uniform, all, live);
  if (live != kFullWarp)
    MOE_FAIL("cuda emulation", what, " needs all 32 lanes of the warp, but only lanes 0x", std::hex, live,
             " took part (a partial warp, an exited lane, or a divergent call)");
  for (int l = 0; l < 32; ++l)
    if (all[l] != all[0])
      MOE_FAIL("cuda emulation", what, ": lanes 0 and ", l,
               " passed different arguments (pointer, ldm, layout) or reached different warp-collective calls");
}

// ---- mma.sync / ldmatrix (core/cuda/mma.h) ----
void warp_gather(const char* what, const uint64_t* mine, int words, uint64_t* all) {
  for (int w = 0; w < words; ++w) {
    uint64_t slot[32];
    unsigned live = 0;
    warp_exchange(kFullWarp, mine[w], slot, live);
    if (live != kFullWarp)
      MOE_FAIL("cuda emulation", what, " needs all 32 lanes of the warp, but only lanes 0x", std::hex, live,
               " took part (a partial warp, an exited lane, or a divergent call)");
    std::memcpy(all + size_t(w) * 32, slot, sizeof slot);
  }
}
// ---- end mma.sync / ldmatrix ----

void check_wmma_operand(const char* what, const void* ptr, unsigned ldm, size_t element_bytes) {
  MOE_CHECK(reinterpret_cast<uintptr_t>(ptr) % 32 == 0, "cuda emulation", what, ": pointer ", ptr,
            " is not 256-bit aligned");
  MOE_CHECK(ldm > 0 && (size_t(ldm) * element_bytes) % 16 == 0, "cuda emulation", what, ": ldm ", ldm,
            " is not a multiple of 16 bytes of ", element_bytes, "-byte elements");
}

void* static_shared(const void* key, size_t bytes, size_t align) {
  BlockState& b = current_block();
  std::lock_guard<std::mutex> lock(b.shared_mutex);
  for (auto& s : b.statics)
    if (s.key == key) return s.data.get();
  // On the GPU these are link- and launch-time errors: static shared memory above 48 KiB does not
  // compile, static + dynamic above the limit (48 KiB without an opt-in) does not launch.
  MOE_CHECK(b.static_bytes + bytes <= kDefaultSharedBytes, "cuda emulation", "kernel ", b.kernel_name, ": ",
            b.static_bytes + bytes, " bytes of static shared memory exceed 48 KiB");
  // Without an opt-in the dynamic part may reach 48 KiB - static; with one, static + the opt-in
  // must fit the target (cudaFuncSetAttribute checks that on the GPU, knowing the static part).
  const size_t total = b.static_bytes + bytes + std::max(b.opt_in, b.dynamic_bytes);
  const size_t limit = b.opt_in ? opt_in_limit(g_target_sm.load()) : kDefaultSharedBytes;
  MOE_CHECK(total <= limit, "cuda emulation", "kernel ", b.kernel_name, ": ", b.static_bytes + bytes,
            " bytes of static shared memory and ", b.opt_in ? b.opt_in : b.dynamic_bytes, " of dynamic",
            b.opt_in ? " (opted in)" : "", " exceed the ", limit, "-byte limit per block",
            b.opt_in ? "" : ": call allow_dynamic_shared (launch.h) before the launch");
  b.statics.push_back(SharedBuffer{key, bytes, alloc_bytes(bytes)});
  b.static_bytes += bytes;
  return b.statics.back().data.get();
}

void* dynamic_shared() { return current_block().dynamic.get(); }

size_t dynamic_shared_bytes() { return current_block().dynamic_bytes; }

bool in_shared(const void* p, size_t bytes) {
  BlockState& b = current_block();
  auto inside = [&](const unsigned char* base, size_t n) {
    const auto at = reinterpret_cast<uintptr_t>(p), lo = reinterpret_cast<uintptr_t>(base);
    return at >= lo && at - lo <= n && bytes <= n - (at - lo);
  };
  if (inside(b.dynamic.get(), b.dynamic_bytes)) return true;
  std::lock_guard<std::mutex> lock(b.shared_mutex);
  for (const SharedBuffer& s : b.statics)
    if (inside(s.data.get(), s.bytes)) return true;
  return false;
}

void* block_local(const void* key, void* (*make)(), void (*destroy)(void*)) {
  BlockState& b = current_block();
  std::lock_guard<std::mutex> lock(b.shared_mutex);
  for (const BlockLocal& l : b.locals)
    if (l.key == key) return l.data;
  b.locals.push_back(BlockLocal{key, make(), destroy});
  return b.locals.back().data;
}

uint64_t block_serial() { return current_block().serial; }

bool launch_failed() { return current_block().failed.load(std::memory_order_relaxed); }

}  // namespace moe::cuda::emu
#endif  // MOE_CUDA_EMULATION
