// The one way kernels are launched: kernel<<<...>>> plus an error check naming the kernel on the
// GPU; under MOE_CUDA_EMULATION the emulation runtime runs the grid block by block.
#pragma once
#include <cstddef>
#include <cstdlib>
#include <tuple>
#include <type_traits>
#include <utility>

#include "core/cuda/kernel.h"
#include "core/cuda/kernel_profile.h"
#include "core/error.h"

namespace moe::cuda {

#ifndef MOE_CUDA_EMULATION
// Launch errors (bad configuration, no device) surface at once; with MOE_CUDA_SYNC=1 in the
// environment every launch is also synchronized, so a fault is blamed on the kernel that made it.
inline void check_launch(const char* name, cudaStream_t stream) {
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) MOE_FAIL("cuda launch", "kernel ", name, ": ", cudaGetErrorString(err));
  static const bool sync_each = [] {
    const char* s = std::getenv("MOE_CUDA_SYNC");
    return s && s[0] == '1';
  }();
  if (sync_each) {
    err = cudaStreamSynchronize(stream);
    if (err != cudaSuccess) MOE_FAIL("cuda kernel", name, ": ", cudaGetErrorString(err));
  }
}
#endif

// launch("name", kernel, grid, block, dynamic shared bytes, stream, args...). Use MOE_LAUNCH,
// which passes the kernel's spelled name.
template <class... Params, class... Args>
void launch(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes,
            cudaStream_t stream, Args&&... args) {
  static_assert(sizeof...(Params) == sizeof...(Args), "launch: argument count differs from the kernel's");
  const KernelTimer timer(name, stream);  // MOE_KERNEL_PROFILE=1 only
#ifdef MOE_CUDA_EMULATION
  std::tuple<std::decay_t<Params>...> params(static_cast<Params>(std::forward<Args>(args))...);
  emu::run_grid(name, reinterpret_cast<const void*>(kernel), grid, block, shared_bytes,
                [&] { std::apply(kernel, params); });
#else
  kernel<<<grid, block, shared_bytes, stream>>>(static_cast<Params>(std::forward<Args>(args))...);
  check_launch(name, stream);
#endif
}

// A kernel whose static + dynamic shared memory exceeds 48 KiB must opt in to its dynamic bytes
// first (up to 163 KiB on sm_80, 227 KiB on sm_90, static included); `op` names the caller in the
// error. Call it before every launch that takes dynamic shared memory: only the kernel knows its
// static part. The emulation records the opt-in per kernel and refuses a launch above 48 KiB
// without one.
template <class... Params>
void allow_dynamic_shared(const char* op, void (*kernel)(Params...), size_t bytes) {
  if (bytes == 0) return;
#ifdef MOE_CUDA_EMULATION
  emu::allow_dynamic_shared(op, reinterpret_cast<const void*>(kernel), bytes);
#else
  const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
  if (err != cudaSuccess)
    MOE_FAIL(op, "cudaFuncSetAttribute(", bytes, " bytes of dynamic shared memory): ", cudaGetErrorString(err));
#endif
}

inline unsigned ceil_div(size_t n, size_t d) { return unsigned((n + d - 1) / d); }

}  // namespace moe::cuda

#define MOE_LAUNCH(kernel, grid, block, shared_bytes, stream, ...) \
  ::moe::cuda::launch(#kernel, kernel, grid, block, shared_bytes, stream, __VA_ARGS__)
