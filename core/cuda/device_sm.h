// The current device's compute capability, for the backend's per-architecture defaults (the
// grouped GEMM's kernel, flash attention's cp.async tiles). Header-only: the emulation build has
// no device.cpp.
#pragma once

#ifndef MOE_CUDA_EMULATION
#include <cuda_runtime_api.h>
#endif

namespace moe::cuda {

// 10 * major + minor (90: H100 / H200) of the current device (its index in *device_out); 90 under
// the emulation, which models sm_90a.
inline int device_sm(int* device_out = nullptr) {
#ifdef MOE_CUDA_EMULATION
  if (device_out) *device_out = 0;
  return 90;
#else
  int device = 0, major = 0, minor = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
  if (device_out) *device_out = device;
  return 10 * major + minor;
#endif
}

}  // namespace moe::cuda
