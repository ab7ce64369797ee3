// Hopper's asynchronous data movement and warp specialization (sm_90a), the pieces of a
// TMA-fed, warp-specialized GEMM: a producer warp issues bulk tensor copies (TMA) into pipeline
// stages of shared memory, each completing on an mbarrier that consumer warpgroups wait on; the
// consumers release a stage through a second ("empty") mbarrier the producer waits on.
//
//   mbar_init(bar, n)            one thread: an mbarrier (8 bytes of shared memory, 8-byte aligned)
//                                whose phases complete after n arrivals; then fence_barrier_init()
//                                and a __syncthreads before any other thread uses it
//   mbar_arrive(bar)             one arrival (release: this thread's earlier writes are seen by
//                                whoever waits for the phase)
//   mbar_arrive_expect_tx(bar, b) one arrival, and b more bytes of copies must complete on the
//                                current phase: the phase completes when its arrivals are all in
//                                AND the copies' bytes (tx-count) have all landed
//   mbar_wait(bar, parity)       spins until the phase with that parity (0, 1, 0, ...: phase k has
//                                parity k % 2) has completed (acquire). A fresh barrier is in
//                                phase 0: waiting for parity 1 returns at once (the "previous"
//                                phase counts as complete), which is how a producer's first wait
//                                on an empty barrier passes
//   load_2d / load_3d(smem, map, bar, c0, c1[, c2])   one bulk tensor copy of the map's box at
//                                element coordinates (c0 innermost; may lie partly or wholly
//                                outside the tensor: those elements land as zeros) into smem
//                                (1024-byte aligned), completing box bytes on bar's tx-count
//   store_2d(map, smem, c0, c1)  one bulk tensor store (cp.async.bulk.tensor...bulk_group) of the
//                                map's box from smem (1024-byte aligned, the load layout above) to
//                                element coordinates (c0 innermost, on a 16-byte boundary; c0, c1
//                                >= 0: an H100 faults on a negative one); rows past the tensor are
//                                not written, columns past it only from the 16-byte chunk after
//                                dims[0] on (so give stored tensors rows of whole 16-byte chunks,
//                                or the row padding up to the chunk's end is written). Asynchronous:
//                                it reads smem some time before the issuing thread's wait_group.read
//                                says so
//   fence_proxy_async_shared()   fence.proxy.async.shared::cta: the thread's generic-proxy writes of
//                                shared memory become visible to the async proxy (the copy engine):
//                                between the writes of a store's source and the store (writers
//                                fence, then a barrier, then one thread stores)
//   bulk_commit_group()          cp.async.bulk.commit_group: the thread's stores since the last
//                                commit form one bulk group
//   bulk_wait_group_read<N>()    cp.async.bulk.wait_group.read N: all but the thread's newest N
//                                groups have read their sources (the staging may be rewritten)
//   bulk_wait_group<N>()         cp.async.bulk.wait_group N: ... and their writes are complete
//   prefetch_tensor_map(map)     prefetch.tensormap: warms the descriptor cache (one thread)
//   setmaxnreg_inc / _dec<R>()   a whole warpgroup moves its per-thread register budget to R
//                                (24..256, a multiple of 8): producers give registers back,
//                                consumers take them
//   named_barrier_sync(id, n)    bar.sync id, n: a barrier over n threads (a multiple of 32, whole
//                                warps) with id 1..15 (0 is __syncthreads'), e.g. the consumer
//                                warpgroups alone
//   elect_one()                  true on one lane of the (full, converged) warp: lane 0
//
// Layout a load writes (CU_TENSOR_MAP_SWIZZLE_128B, box[0] = 64 bf16 = 128 bytes): box rows of
// 128 bytes, row r = i1 for a 2D box [b1][64], r = i2 * b1 + i1 for a 3D box [b2][b1][64]; the
// 16-byte chunk c of row r lands at chunk c ^ (r % 8) (the swizzle XORs absolute shared-address
// bits 4-6 with bits 7-9, so the stage must be 1024-byte aligned for r % 8 to be the row within
// the atom). That is the K-major and MN-major 128B layout of wgmma.h and grouped_gemm_sm90.cu.
//
// Sources: PTX ISA 8.x "mbarrier" (9.7.13.15: phases, pending arrival count, tx-count, try_wait
// .parity), "cp.async.bulk.tensor" (9.7.9.25.5.1), cp.async.bulk.commit_group / wait_group,
// "membar / fence" (fence.proxy.async), "Tensor Copy Swizzling Modes", setmaxnreg
// (9.7.17.1), bar.sync / barrier (9.7.13.1), elect.sync (9.7.13.10); CUDA driver API
// cuTensorMapEncodeTiled; CUTLASS cute/arch/copy_sm90_tma.hpp, cutlass/arch/barrier.h (whose
// asm these follow).
//
// Under MOE_CUDA_EMULATION (core/cuda/emulation_tma.h) every call is checked and emulated
// faithfully: mbarriers are real 64-bit words in shared memory updated atomically, copies land
// late (when a thread waits on their barrier) with their destination poisoned until then, a wait
// that can never finish fails the launch after a timeout; stores read their source at the wait
// that releases it (a source rewritten before then, or written with no proxy fence before the
// store, fails the launch); see that file.
//
// For a kernel (core/cuda/tma_selftest.cu is a worked example): take the map as `const
// __grid_constant__ TensorMap map` and pass &map (a copy in registers or local memory is not a
// tensor map the copy engine can read); give the kernel __launch_bounds__(threads, 1), else ptxas
// ignores setmaxnreg (C7508: no register count at entry); align stages on the shared-window address
// (wgmma::smem_address, which under the emulation is the offset into the dynamic shared memory,
// where TMA destinations must lie); TMA writes and wgmma reads are both async proxy: no
// fence_proxy_async between them. A stage may be released after wgmma::wait_group by every
// consumer thread or by one thread per warpgroup (the emulation's wait_group is warpgroup-wide).
#pragma once
#include <cstdint>

#include "core/cuda/kernel.h"
#include "core/cuda/tensor_map.h"
#include "core/cuda/wgmma.h"  // MOE_WGMMA_AVAILABLE: the sm_90a code

#ifdef MOE_CUDA_EMULATION
#include "core/cuda/emulation_tma.h"
#endif

namespace moe::cuda::tma {

template <int kRegs>
__host__ __device__ constexpr bool valid_reg_count() {
  return kRegs >= 24 && kRegs <= 256 && kRegs % 8 == 0;
}

#ifdef MOE_CUDA_EMULATION

inline void mbar_init(uint64_t* bar, unsigned arrivals) { ::moe::cuda::emu_tma::mbar_init(bar, arrivals); }
inline void fence_barrier_init() { ::moe::cuda::emu_tma::fence_barrier_init(); }
inline void mbar_arrive(uint64_t* bar) { ::moe::cuda::emu_tma::mbar_arrive(bar, 0); }
inline void mbar_arrive_expect_tx(uint64_t* bar, unsigned bytes) { ::moe::cuda::emu_tma::mbar_arrive(bar, bytes); }
inline void mbar_wait(uint64_t* bar, unsigned parity) { ::moe::cuda::emu_tma::mbar_wait(bar, parity); }
inline void load_2d(void* smem, const TensorMap* map, uint64_t* bar, int c0, int c1) {
  const int c[3] = {c0, c1, 0};
  ::moe::cuda::emu_tma::load(smem, map, bar, 2, c);
}
inline void load_3d(void* smem, const TensorMap* map, uint64_t* bar, int c0, int c1, int c2) {
  const int c[3] = {c0, c1, c2};
  ::moe::cuda::emu_tma::load(smem, map, bar, 3, c);
}
inline void prefetch_tensor_map(const TensorMap* map) { ::moe::cuda::emu_tma::prefetch_tensor_map(map); }
inline void fence_proxy_async_shared() { ::moe::cuda::emu_tma::fence_proxy_async_shared(); }
inline void store_2d(const TensorMap* map, const void* smem, int c0, int c1) {
  const int c[3] = {c0, c1, 0};
  ::moe::cuda::emu_tma::store_2d(map, smem, c);
}
inline void bulk_commit_group() { ::moe::cuda::emu_tma::bulk_commit_group(); }
template <int kPending>
void bulk_wait_group_read() {
  ::moe::cuda::emu_tma::bulk_wait_group("tma::bulk_wait_group_read", kPending);
}
template <int kPending>
void bulk_wait_group() {
  ::moe::cuda::emu_tma::bulk_wait_group("tma::bulk_wait_group", kPending);
}
template <int kRegs>
void setmaxnreg_inc() {
  static_assert(valid_reg_count<kRegs>(), "setmaxnreg: 24 <= registers <= 256, a multiple of 8");
  ::moe::cuda::emu_tma::setmaxnreg("setmaxnreg.inc", kRegs, true);
}
template <int kRegs>
void setmaxnreg_dec() {
  static_assert(valid_reg_count<kRegs>(), "setmaxnreg: 24 <= registers <= 256, a multiple of 8");
  ::moe::cuda::emu_tma::setmaxnreg("setmaxnreg.dec", kRegs, false);
}
inline void named_barrier_sync(int id, int threads) { ::moe::cuda::emu_tma::named_barrier_sync(id, threads); }
inline bool elect_one() { return ::moe::cuda::emu_tma::elect_one(); }

#elif MOE_WGMMA_AVAILABLE

__device__ __forceinline__ uint32_t smem_u32(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }

__device__ __forceinline__ void mbar_init(uint64_t* bar, unsigned arrivals) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(arrivals) : "memory");
}
__device__ __forceinline__ void fence_barrier_init() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.release.cta.shared::cta.b64 _, [%0];\n" ::"r"(smem_u32(bar)) : "memory");
}
__device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t* bar, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.release.cta.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_u32(bar)),
               "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void mbar_wait(uint64_t* bar, unsigned parity) {
  const uint32_t addr = smem_u32(bar);
  uint32_t done = 0;
  do {
    // try_wait suspends the thread for a system-dependent time before it gives up: no backoff here.
    asm volatile(
        "{\n.reg .pred p;\n"
        "mbarrier.try_wait.parity.acquire.cta.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(addr), "r"(parity)
        : "memory");
  } while (!done);
}
__device__ __forceinline__ void load_2d(void* smem, const TensorMap* map, uint64_t* bar, int c0, int c1) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4}], [%2];\n" ::
          "r"(smem_u32(smem)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(smem_u32(bar)), "r"(c0), "r"(c1)
      : "memory");
}
__device__ __forceinline__ void load_3d(void* smem, const TensorMap* map, uint64_t* bar, int c0, int c1, int c2) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5}], "
      "[%2];\n" ::"r"(smem_u32(smem)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(smem_u32(bar)), "r"(c0), "r"(c1), "r"(c2)
      : "memory");
}
__device__ __forceinline__ void prefetch_tensor_map(const TensorMap* map) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
}
__device__ __forceinline__ void fence_proxy_async_shared() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
__device__ __forceinline__ void store_2d(const TensorMap* map, const void* smem, int c0, int c1) {
  asm volatile("cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%2, %3}], [%1];\n" ::"l"(
                   reinterpret_cast<uint64_t>(map)),
               "r"(smem_u32(smem)), "r"(c0), "r"(c1)
               : "memory");
}
__device__ __forceinline__ void bulk_commit_group() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
template <int kPending>
__device__ __forceinline__ void bulk_wait_group_read() {
  asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(kPending) : "memory");
}
template <int kPending>
__device__ __forceinline__ void bulk_wait_group() {
  asm volatile("cp.async.bulk.wait_group %0;\n" ::"n"(kPending) : "memory");
}
template <int kRegs>
__device__ __forceinline__ void setmaxnreg_inc() {
  static_assert(valid_reg_count<kRegs>(), "setmaxnreg: 24 <= registers <= 256, a multiple of 8");
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}
template <int kRegs>
__device__ __forceinline__ void setmaxnreg_dec() {
  static_assert(valid_reg_count<kRegs>(), "setmaxnreg: 24 <= registers <= 256, a multiple of 8");
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}
__device__ __forceinline__ void named_barrier_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ bool elect_one() {
  uint32_t elected = 0;
  asm volatile(
      "{\n.reg .b32 r;\n.reg .pred p;\n"
      "elect.sync r|p, 0xffffffff;\n"
      "selp.u32 %0, 1, 0, p;\n}\n"
      : "=r"(elected));
  return elected != 0;
}

#else  // not sm_90a: callers are compiled but must not run (they trap)

__device__ __forceinline__ void mbar_init(uint64_t*, unsigned) { __trap(); }
__device__ __forceinline__ void fence_barrier_init() { __trap(); }
__device__ __forceinline__ void mbar_arrive(uint64_t*) { __trap(); }
__device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t*, unsigned) { __trap(); }
__device__ __forceinline__ void mbar_wait(uint64_t*, unsigned) { __trap(); }
__device__ __forceinline__ void load_2d(void*, const TensorMap*, uint64_t*, int, int) { __trap(); }
__device__ __forceinline__ void load_3d(void*, const TensorMap*, uint64_t*, int, int, int) { __trap(); }
__device__ __forceinline__ void prefetch_tensor_map(const TensorMap*) { __trap(); }
__device__ __forceinline__ void fence_proxy_async_shared() { __trap(); }
__device__ __forceinline__ void store_2d(const TensorMap*, const void*, int, int) { __trap(); }
__device__ __forceinline__ void bulk_commit_group() { __trap(); }
template <int kPending>
__device__ __forceinline__ void bulk_wait_group_read() {
  __trap();
}
template <int kPending>
__device__ __forceinline__ void bulk_wait_group() {
  __trap();
}
template <int kRegs>
__device__ __forceinline__ void setmaxnreg_inc() {
  __trap();
}
template <int kRegs>
__device__ __forceinline__ void setmaxnreg_dec() {
  __trap();
}
__device__ __forceinline__ void named_barrier_sync(int, int) { __trap(); }
__device__ __forceinline__ bool elect_one() {
  __trap();
  return false;
}

#endif

}  // namespace moe::cuda::tma
