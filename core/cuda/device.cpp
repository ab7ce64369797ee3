// Device detection on the real CUDA build: cudaErrorInsufficientDriver, cudaErrorNoDevice and
// friends become one line, "no CUDA device: ...", instead of a failure at the first kernel.
#include "core/cuda/device.h"

#include <cuda_runtime_api.h>

#include "core/error.h"
#include "parallel/communicator.h"

namespace moe::cuda {

std::string device_unavailable_reason() {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error so later checks are not blamed on it
    return std::string(cudaGetErrorName(err)) + " (" + cudaGetErrorString(err) + ")";
  }
  if (count == 0) return "the CUDA runtime sees 0 devices";
  return {};
}

DeviceInfo require_device(int index) {
  std::string why = device_unavailable_reason();
  MOE_CHECK(why.empty(), "no CUDA device", why);
  int count = 0;
  cudaGetDeviceCount(&count);
  if (index < 0) index = node_local_rank(0) % count;  // the rule make_nccl_communicator follows
  MOE_CHECK(index >= 0 && index < count, "no CUDA device", "device index ", index, " requested but ", count,
            " device(s) are present");
  cudaError_t err = cudaSetDevice(index);
  MOE_CHECK(err == cudaSuccess, "no CUDA device", "cudaSetDevice(", index, "): ", cudaGetErrorString(err));
  cudaDeviceProp prop{};
  err = cudaGetDeviceProperties(&prop, index);
  MOE_CHECK(err == cudaSuccess, "no CUDA device", "cudaGetDeviceProperties(", index, "): ", cudaGetErrorString(err));
  DeviceInfo info;
  info.index = index;
  info.name = prop.name;
  info.major = prop.major;
  info.minor = prop.minor;
  info.multiprocessors = prop.multiProcessorCount;
  info.global_bytes = prop.totalGlobalMem;
  info.shared_bytes_per_block_optin = prop.sharedMemPerBlockOptin;
  return info;
}

}  // namespace moe::cuda
