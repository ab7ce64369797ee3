// What every kernel source includes: shared-memory declarations that the emulation can give
// per-block storage, and the bf16 device type with its conversions (fp32 math, bf16 storage).
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/cuda/runtime.h"
#include "core/dtype.h"
#ifdef MOE_CUDA_EMULATION
#include <cstring>

#include "core/error.h"
#endif

// Full unrolling where a loop indexes a register array: without it the array lives in local memory.
#ifdef MOE_CUDA_EMULATION
#define MOE_UNROLL
#else
#define MOE_UNROLL _Pragma("unroll")
#endif

#ifndef MOE_CUDA_EMULATION
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#define MOE_SHARED(type, name, dims) __shared__ type name dims
#define MOE_DYNAMIC_SHARED(type, name)                               \
  extern __shared__ __align__(16) unsigned char moe_dynamic_smem_[]; \
  type* name = reinterpret_cast<type*>(moe_dynamic_smem_)
#endif

namespace moe::cuda {

// Device-side bf16: CUDA's own type on the GPU; host wrappers take moe::bf16 (same 2-byte layout).
#ifdef MOE_CUDA_EMULATION
using dbf16 = ::moe::bf16;
inline float to_float(dbf16 v) { return ::moe::bf16_to_float(v); }
#else
using dbf16 = __nv_bfloat16;
__device__ __forceinline__ float to_float(dbf16 v) { return __bfloat162float(v); }
#endif
static_assert(sizeof(dbf16) == sizeof(::moe::bf16), "bf16 layouts must match");
__host__ __device__ __forceinline__ float to_float(float v) { return v; }

template <class T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ dbf16 from_float<dbf16>(float v) {
#ifdef MOE_CUDA_EMULATION
  return ::moe::float_to_bf16(v);
#else
  return __float2bfloat16(v);  // round to nearest even, as moe::float_to_bf16
#endif
}

// Vector accesses: one instruction on the GPU, which faults when the address is not a multiple of
// the size (x86 lets it pass), so under the emulation they check it. copy16 moves 16 bytes (both
// addresses 16-byte aligned), store32 writes 4 (a 4-byte aligned address).
#ifdef MOE_CUDA_EMULATION
inline void check_aligned(const char* what, const void* p, size_t bytes) {
  MOE_CHECK(reinterpret_cast<uintptr_t>(p) % bytes == 0, "cuda emulation", what, ": address ", p, " is not ",
            bytes, "-byte aligned (a misaligned vector access faults on the GPU)");
}
inline void copy16(void* dst, const void* src) {
  check_aligned("copy16 destination", dst, 16);
  check_aligned("copy16 source", src, 16);
  std::memcpy(dst, src, 16);
}
inline void store32(void* dst, uint32_t v) {
  check_aligned("store32", dst, 4);
  std::memcpy(dst, &v, 4);
}
#else
__device__ __forceinline__ void copy16(void* dst, const void* src) {
  *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
}
__device__ __forceinline__ void store32(void* dst, uint32_t v) { *reinterpret_cast<uint32_t*>(dst) = v; }
#endif

// Host element type -> device element type (moe::bf16 -> dbf16, float -> float).
template <class T>
struct DeviceType {
  using type = T;
};
template <>
struct DeviceType<::moe::bf16> {
  using type = dbf16;
};
template <class T>
using device_t = typename DeviceType<T>::type;
template <class T>
device_t<T>* dev(T* p) {
  return reinterpret_cast<device_t<T>*>(p);
}
template <class T>
const device_t<T>* dev(const T* p) {
  return reinterpret_cast<const device_t<T>*>(p);
}

}  // namespace moe::cuda
