// Tensor: a strided view (shape, strides, offset) over reference-counted Storage, with the
// autograd fields (requires_grad, grad). Ops live in core/cpu/*.h; core/ops.h includes them all.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"

namespace moe {

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);
int64_t shape_numel(const Shape& s);
Shape contiguous_strides(const Shape& s);

enum class Device : uint8_t { cpu, cuda };
const char* device_name(Device d);

struct Storage {
  void* data = nullptr;
  size_t bytes = 0;
  Device device = Device::cpu;
  Storage(size_t bytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
};

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  Shape shape, strides;
  int64_t offset = 0;  // in elements
  DType dtype = DType::f32;
  bool requires_grad = false;
  std::shared_ptr<TensorImpl> grad;
  std::string name;  // parameters carry their hierarchical name; used in error messages
};

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // ---- creation (contiguous; Device::cuda allocates through the installed CUDA backend) ----
  static Tensor empty(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu);
  static Tensor zeros(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu);
  static Tensor full(const Shape& shape, double value, DType dtype = DType::f32, Device device = Device::cpu);
  static Tensor ones(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu) {
    return full(shape, 1.0, dtype, device);
  }
  static Tensor scalar(double value, DType dtype = DType::f32) { return full({}, value, dtype); }
  template <class T>
  static Tensor from_vector(const std::vector<T>& values, const Shape& shape);
  static Tensor arange(int64_t n, DType dtype = DType::i64);

  // ---- metadata ----
  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const { return impl_->shape; }
  const Shape& strides() const { return impl_->strides; }
  int64_t dim() const { return int64_t(impl_->shape.size()); }
  int64_t size(int64_t d) const;  // negative d counts from the end
  int64_t numel() const { return shape_numel(impl_->shape); }
  DType dtype() const { return impl_->dtype; }
  Device device() const { return impl_->storage->device; }
  int64_t offset() const { return impl_->offset; }
  bool is_contiguous() const;
  std::string shape_str() const { return moe::shape_str(impl_->shape); }
  const std::string& name() const { return impl_->name; }
  void set_name(std::string n) { impl_->name = std::move(n); }
  TensorImpl* impl() const { return impl_.get(); }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }
  bool same_storage(const Tensor& o) const { return impl_->storage == o.impl_->storage; }

  // ---- data access (checks the dtype; pointer is at the view's offset) ----
  // Host code reads and writes through data(): it throws for a tensor on the device, so a host
  // loop over device memory fails loudly (also under the emulation, where device memory is
  // host memory). Kernels' host wrappers take device_data().
  template <class T> T* data();
  template <class T> const T* data() const;
  void* raw_data() const;
  template <class T> T* device_data() const;  // any device; the backend's access
  void* raw_device_data() const;
  // These copy a device tensor to the host first.
  template <class T> T item() const;
  double item_double() const;              // any dtype, one element
  template <class T> std::vector<T> to_vector() const;  // contiguous copy, dtype must match
  std::vector<double> to_double_vector() const;       // any dtype

  // ---- copies and conversions (no autograd unless stated) ----
  Tensor contiguous() const;         // differentiable; returns *this when already contiguous
  Tensor clone() const;              // detached contiguous copy
  Tensor detach() const;             // same storage, no grad history
  Tensor to(DType dtype) const;      // differentiable between floating types
  Tensor to(Device device) const;    // differentiable; returns *this when already there
  void copy_(const Tensor& src);     // element-wise copy into this view; shapes must match; any devices
  void fill_(double value);
  void zero_() { fill_(0.0); }

  // ---- views (differentiable; share storage) ----
  Tensor reshape(const Shape& shape) const;  // copies when the view is not contiguous
  Tensor transpose(int64_t a, int64_t b) const;
  Tensor slice(int64_t dim, int64_t start, int64_t end) const;  // [start, end) along dim
  Tensor select(int64_t dim, int64_t index) const;              // drops dim
  Tensor unsqueeze(int64_t dim) const;
  Tensor squeeze(int64_t dim) const;

  // ---- autograd ----
  bool requires_grad() const { return impl_->requires_grad; }
  Tensor& set_requires_grad(bool r);
  Tensor grad() const { return Tensor(impl_->grad); }
  void set_grad(const Tensor& g) { impl_->grad = g.impl_; }
  void zero_grad() { impl_->grad.reset(); }
  void backward() const;                      // this must be a one-element tensor
  void backward(const Tensor& seed) const;    // seed has this tensor's shape

 private:
  std::shared_ptr<TensorImpl> impl_;
};

// Normalizes a possibly negative dim against `ndim`; throws naming `op` when out of range.
int64_t wrap_dim(int64_t d, int64_t ndim, const char* op);

}  // namespace moe
