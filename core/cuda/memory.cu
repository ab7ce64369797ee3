// Device allocation and copies: cudaMalloc / cudaMemcpy on the GPU (every call checked, the
// failing call named), plain host memory under the emulation.
#include <cstdlib>
#include <cstring>

#include "core/cuda/kernel_profile.h"
#include "core/cuda/memory.h"
#include "core/error.h"

namespace moe::cuda {

#ifdef MOE_CUDA_EMULATION
void* device_malloc(size_t bytes) {
  void* p = std::malloc(bytes ? bytes : 1);
  MOE_CHECK(p, "device_malloc", "out of memory allocating ", bytes, " bytes");
  std::memset(p, 0xFF, bytes);  // uninitialized device memory reads back as NaN / -1
  return p;
}
void device_free(void* p) noexcept { std::free(p); }
void copy_to_device(void* dst, const void* src, size_t bytes) {
  const KernelTimer timer("cudaMemcpy host to device", nullptr);
  std::memcpy(dst, src, bytes);
}
void copy_to_host(void* dst, const void* src, size_t bytes) {
  const KernelTimer timer("cudaMemcpy device to host", nullptr);
  std::memcpy(dst, src, bytes);
}
void device_memset(void* p, int byte, size_t bytes) { std::memset(p, byte, bytes); }
void device_memset_async(void* p, int byte, size_t bytes, cudaStream_t) { std::memset(p, byte, bytes); }
void device_synchronize() {}
#else
#define MOE_CUDA_CALL(op, call)                                                  \
  do {                                                                           \
    cudaError_t moe_err = (call);                                                \
    if (moe_err != cudaSuccess) MOE_FAIL(op, cudaGetErrorString(moe_err));      \
  } while (0)
void* device_malloc(size_t bytes) {
  void* p = nullptr;
  cudaError_t err = cudaMalloc(&p, bytes ? bytes : 1);
  MOE_CHECK(err == cudaSuccess, "cudaMalloc", "allocating ", bytes, " bytes: ", cudaGetErrorString(err));
  return p;
}
void device_free(void* p) noexcept {
  if (p) cudaFree(p);
}
void copy_to_device(void* dst, const void* src, size_t bytes) {
  const KernelTimer timer("cudaMemcpy host to device", nullptr);
  MOE_CUDA_CALL("cudaMemcpy (host to device)", cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
}
void copy_to_host(void* dst, const void* src, size_t bytes) {
  const KernelTimer timer("cudaMemcpy device to host", nullptr);
  MOE_CUDA_CALL("cudaMemcpy (device to host)", cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}
void device_memset(void* p, int byte, size_t bytes) { MOE_CUDA_CALL("cudaMemset", cudaMemset(p, byte, bytes)); }
void device_memset_async(void* p, int byte, size_t bytes, cudaStream_t stream) {
  MOE_CUDA_CALL("cudaMemsetAsync", cudaMemsetAsync(p, byte, bytes, stream));
}
void device_synchronize() { MOE_CUDA_CALL("cudaDeviceSynchronize", cudaDeviceSynchronize()); }
#endif

}  // namespace moe::cuda
