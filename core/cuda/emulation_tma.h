// The emulation of core/cuda/tma.h (mbarriers, TMA bulk tensor loads, setmaxnreg, named barriers).
// Work in progress: the tensor map fields only; the device calls fail as not yet emulated.
#pragma once
#ifdef MOE_CUDA_EMULATION

#include <cstdint>

#include "core/cuda/emulation.h"
#include "core/cuda/tensor_map.h"
#include "core/error.h"

namespace moe::cuda::emu_tma {

// What make_tensor_map_bf16 writes into a TensorMap's 128 bytes under the emulation.
constexpr uint32_t kMapMagic = 0x544d4170;  // "pAMT"
struct MapFields {
  uint32_t magic, rank;
  const void* base;
  uint64_t dims[3];     // elements, innermost first (1 past the rank)
  uint64_t strides[3];  // bytes: 2 (the element), then dims 1 and 2 (0 past the rank)
  uint32_t box[3];
};
static_assert(sizeof(MapFields) <= sizeof(TensorMap), "the emulation's tensor map fields must fit 128 bytes");

[[noreturn]] inline void not_yet(const char* what) {
  MOE_FAIL("cuda emulation", what, " is not yet emulated");
}
inline void mbar_init(uint64_t*, unsigned) { not_yet("tma::mbar_init"); }
inline void fence_barrier_init() { not_yet("tma::fence_barrier_init"); }
inline void mbar_arrive(uint64_t*, unsigned) { not_yet("tma::mbar_arrive"); }
inline void mbar_wait(uint64_t*, unsigned) { not_yet("tma::mbar_wait"); }
inline void load(void*, const TensorMap*, uint64_t*, int, const int*) { not_yet("tma::load"); }
inline void prefetch_tensor_map(const TensorMap*) { not_yet("tma::prefetch_tensor_map"); }
inline void setmaxnreg(const char* what, int, bool) { not_yet(what); }
inline void named_barrier_sync(int, int) { not_yet("tma::named_barrier_sync"); }
inline bool elect_one() { not_yet("tma::elect_one"); }

}  // namespace moe::cuda::emu_tma

#endif  // MOE_CUDA_EMULATION
