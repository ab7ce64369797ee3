// Device memory for host code: allocation, copies and a typed RAII buffer. Under the emulation
// "device" memory is host memory, so the same wrappers and tests run without a GPU.
#pragma once
#include <cstddef>
#include <vector>

#include "core/cuda/runtime.h"

namespace moe::cuda {

void* device_malloc(size_t bytes);
void device_free(void* p) noexcept;
void copy_to_device(void* dst, const void* src, size_t bytes);
void copy_to_host(void* dst, const void* src, size_t bytes);
void device_memset(void* p, int byte, size_t bytes);
// Ordered on `stream` like a kernel (cudaMemsetAsync): for use inside kernel wrappers.
void device_memset_async(void* p, int byte, size_t bytes, cudaStream_t stream);
void device_synchronize();

// A typed device array; from_host / to_host copy whole vectors.
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t n) : n_(n), p_(static_cast<T*>(device_malloc(n * sizeof(T)))) {}
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) {
    copy_to_device(p_, host.data(), n_ * sizeof(T));
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : n_(o.n_), p_(o.p_) { o.n_ = 0, o.p_ = nullptr; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(n_, o.n_);
    std::swap(p_, o.p_);
    return *this;
  }
  ~DeviceBuffer() { device_free(p_); }

  T* get() { return p_; }
  const T* get() const { return p_; }
  size_t size() const { return n_; }
  void zero() { device_memset(p_, 0, n_ * sizeof(T)); }
  std::vector<T> to_host() const {
    std::vector<T> out(n_);
    copy_to_host(out.data(), p_, n_ * sizeof(T));
    return out;
  }

 private:
  size_t n_ = 0;
  T* p_ = nullptr;
};

}  // namespace moe::cuda
