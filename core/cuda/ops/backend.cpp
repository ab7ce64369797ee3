// Device, memory and copies of the CUDA backend.
#include "core/cuda/ops/cuda_backend.h"

#include "core/cuda/caching_allocator.h"
#include "core/cuda/copy.h"
#include "core/cuda/kernel_profile.h"
#include "core/cuda/memory.h"
#ifndef MOE_CUDA_EMULATION
#include "core/cuda/device.h"
#endif

namespace moe::cuda {
namespace {

StridedView view_of(const Tensor& t, const char* op) {
  MOE_CHECK(t.device() == Device::cuda, op, "tensor '", t.name(), "' ", t.shape_str(), " is not on the device");
  MOE_CHECK(t.dim() <= kMaxCopyDims, op, "tensor ", t.shape_str(), " has more than ", kMaxCopyDims, " dims");
  StridedView v;
  v.data = t.raw_device_data();
  v.dtype = t.dtype();
  for (int64_t k = 0; k < t.dim(); ++k) v.strides[k] = t.strides()[size_t(k)];
  return v;
}

}  // namespace

std::string Backend::unavailable_reason() {
#ifdef MOE_CUDA_EMULATION
  return "";
#else
  return device_unavailable_reason();
#endif
}

std::string Backend::describe() {
#ifdef MOE_CUDA_EMULATION
  return "CUDA emulation (kernels on host threads)";
#else
  DeviceInfo info = require_device();
  return info.name + " (sm_" + std::to_string(info.major) + std::to_string(info.minor) + ")";
#endif
}

void Backend::synchronize() { device_synchronize(); }

std::string Backend::take_kernel_profile() {
  if (!kernel_profile_enabled()) return "";
  std::string table = kernel_profile_table();
  kernel_profile_reset();
  return table;
}

void* Backend::allocate(size_t bytes) { return CachingAllocator::instance().allocate(bytes); }

void Backend::release(void* p, size_t) noexcept { CachingAllocator::instance().release(p); }

void Backend::copy_bytes(void* dst, const void* src, size_t bytes, CopyKind kind) {
  if (bytes == 0) return;
  switch (kind) {
    case CopyKind::host_to_device: copy_to_device(dst, src, bytes); return;
    case CopyKind::device_to_host: copy_to_host(dst, src, bytes); return;
    case CopyKind::device_to_device: {
      // Copied as 2-byte words (the smallest element size, so any tensor's bytes qualify).
      MOE_CHECK(bytes % 2 == 0, "cuda copy", "device-to-device copy of an odd byte count ", bytes);
      StridedView d, s;
      d.data = dst, s.data = const_cast<void*>(src);
      d.dtype = s.dtype = DType::bf16;
      d.strides[0] = s.strides[0] = 1;
      const int64_t n = int64_t(bytes / 2);
      strided_copy(d, s, &n, 1);
      return;
    }
  }
}

void Backend::copy(const Tensor& dst, const Tensor& src) {
  StridedView d = view_of(dst, "copy_"), s = view_of(src, "copy_");
  strided_copy(d, s, dst.shape().data(), int(dst.dim()));
}

void Backend::fill(const Tensor& dst, double value) {
  StridedView d = view_of(dst, "fill_");
  cuda::fill(d, dst.shape().data(), int(dst.dim()), value);
}

void install_backend(const char* what) {
  register_backend();
  install_cuda_backend(nullptr);
  require_cuda_device(what);
}

void register_backend() {
  register_cuda_backend_factory([] { return std::make_shared<Backend>(); });
}

}  // namespace moe::cuda
