#include "core/device.h"

namespace moe {
namespace {
std::shared_ptr<CudaBackend>& installed() {
  static std::shared_ptr<CudaBackend> backend;
  return backend;
}
std::function<std::shared_ptr<CudaBackend>()>& factory() {
  static std::function<std::shared_ptr<CudaBackend>()> make;
  return make;
}
}  // namespace

void register_cuda_backend_factory(std::function<std::shared_ptr<CudaBackend>()> make) {
  factory() = std::move(make);
}

CudaBackend& require_cuda_device(const char* what) {
  if (!installed() && factory()) installed() = factory()();
  CudaBackend& b = cuda_backend(what);
  const std::string reason = b.unavailable_reason();
  MOE_CHECK(reason.empty(), what, "no CUDA device: ", reason, "; set train.device = \"cpu\" on this machine");
  return b;
}

void install_cuda_backend(std::shared_ptr<CudaBackend> backend) { installed() = std::move(backend); }

bool cuda_backend_installed() { return installed() != nullptr; }

CudaBackend& cuda_backend(const char* what) {
  CudaBackend* b = installed().get();
  MOE_CHECK(b != nullptr, what,
            "this program was built without the CUDA backend; build on a machine with the CUDA toolkit "
            "(cmake finds /usr/local/cuda) or use device = \"cpu\"");
  return *b;
}

Device common_device(const char* op, std::initializer_list<Tensor> tensors) {
  const Tensor* first = nullptr;
  for (const Tensor& t : tensors) {
    if (!t.defined()) continue;
    if (!first) {
      first = &t;
      continue;
    }
    MOE_CHECK(t.device() == first->device(), op, "tensors on different devices: ",
              first->name().empty() ? std::string("an input") : "'" + first->name() + "'", " ",
              first->shape_str(), " on ", device_name(first->device()), ", ",
              t.name().empty() ? std::string("another") : "'" + t.name() + "'", " ", t.shape_str(), " on ",
              device_name(t.device()), " (move the model and the batch with .to(Device))");
  }
  return first ? first->device() : Device::cpu;
}

}  // namespace moe
