// What every kernel source includes: shared-memory declarations that the emulation can give
// per-block storage, and the bf16 device type with its conversions (fp32 math, bf16 storage).
#pragma once
#include "core/cuda/runtime.h"
#include "core/dtype.h"

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
