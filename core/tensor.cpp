// Tensor creation, data access, strided copies and the differentiable view ops.
#include "core/tensor.h"

#include <algorithm>
#include <sstream>

#include "core/allocator.h"
#include "core/autograd.h"
#include "core/device.h"

namespace moe {

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << "]";
  return os.str();
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

Shape contiguous_strides(const Shape& s) {
  Shape st(s.size());
  int64_t acc = 1;
  for (int64_t i = int64_t(s.size()) - 1; i >= 0; --i) {
    st[i] = acc;
    acc *= s[i];
  }
  return st;
}

const char* device_name(Device d) { return d == Device::cpu ? "cpu" : "cuda"; }

int64_t wrap_dim(int64_t d, int64_t ndim, const char* op) {
  int64_t w = d < 0 ? d + ndim : d;
  MOE_CHECK(w >= 0 && w < ndim, op, "dim ", d, " out of range for a tensor of ", ndim, " dims");
  return w;
}

Storage::Storage(size_t b, Device dev) : bytes(b), device(dev) {
  data = dev == Device::cpu ? host_alloc(bytes) : cuda_backend("Tensor storage").allocate(bytes);
}

Storage::~Storage() {
  if (device == Device::cpu)
    host_free(data, bytes);
  else if (cuda_backend_installed())  // else the backend is gone at exit, and so is its memory
    cuda_backend("Tensor storage").release(data, bytes);
}

// ---------------------------------------------------------------- creation

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  for (int64_t d : shape) MOE_CHECK(d >= 0, "Tensor::empty", "negative size in shape ", moe::shape_str(shape));
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::make_shared<Storage>(size_t(shape_numel(shape)) * dtype_size(dtype), device);
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = dtype;
  return Tensor(std::move(impl));
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  if (device == Device::cpu)
    std::memset(t.raw_data(), 0, size_t(t.numel()) * dtype_size(dtype));
  else
    t.fill_(0.0);
  return t;
}

Tensor Tensor::full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.fill_(value);
  return t;
}

template <class T>
Tensor Tensor::from_vector(const std::vector<T>& values, const Shape& shape) {
  MOE_CHECK(int64_t(values.size()) == shape_numel(shape), "Tensor::from_vector", values.size(),
            " values do not fill shape ", moe::shape_str(shape));
  Tensor t = empty(shape, dtype_of<T>());
  std::copy(values.begin(), values.end(), t.data<T>());
  return t;
}
template Tensor Tensor::from_vector<float>(const std::vector<float>&, const Shape&);
template Tensor Tensor::from_vector<double>(const std::vector<double>&, const Shape&);
template Tensor Tensor::from_vector<int32_t>(const std::vector<int32_t>&, const Shape&);
template Tensor Tensor::from_vector<int64_t>(const std::vector<int64_t>&, const Shape&);
template Tensor Tensor::from_vector<bf16>(const std::vector<bf16>&, const Shape&);

Tensor Tensor::arange(int64_t n, DType dtype) {
  Tensor t = empty({n}, dtype);
  for (int64_t i = 0; i < n; ++i) {
    switch (dtype) {
      case DType::f32: t.data<float>()[i] = float(i); break;
      case DType::f64: t.data<double>()[i] = double(i); break;
      case DType::i32: t.data<int32_t>()[i] = int32_t(i); break;
      case DType::i64: t.data<int64_t>()[i] = i; break;
      case DType::bf16: t.data<bf16>()[i] = float_to_bf16(float(i)); break;
    }
  }
  return t;
}

// ---------------------------------------------------------------- metadata

int64_t Tensor::size(int64_t d) const { return impl_->shape[wrap_dim(d, dim(), "Tensor::size")]; }

bool Tensor::is_contiguous() const {
  int64_t expect = 1;
  for (int64_t i = dim() - 1; i >= 0; --i) {
    if (impl_->shape[i] != 1 && impl_->strides[i] != expect) return false;
    expect *= impl_->shape[i];
  }
  return true;
}

// ---------------------------------------------------------------- data access

namespace {
void check_on_host(const Tensor& t, const char* op) {
  MOE_CHECK(t.device() == Device::cpu, op, "tensor '", t.name(), "' ", t.shape_str(),
            " is on the cuda device: host code cannot read it (copy it with .to(Device::cpu))");
}
}  // namespace

template <class T>
T* Tensor::data() {
  MOE_CHECK(defined(), "Tensor::data", "undefined tensor");
  check_on_host(*this, "Tensor::data");
  return device_data<T>();
}

template <class T>
T* Tensor::device_data() const {
  MOE_CHECK(defined(), "Tensor::data", "undefined tensor");
  MOE_CHECK(dtype_of<T>() == dtype(), "Tensor::data", "tensor '", name(), "' ", shape_str(), " has dtype ",
            dtype_name(dtype()), ", accessed as ", dtype_name(dtype_of<T>()));
  return static_cast<T*>(impl_->storage->data) + impl_->offset;
}
template <class T>
const T* Tensor::data() const {
  return const_cast<Tensor*>(this)->data<T>();
}
#define MOE_INST_DATA(T)                  \
  template T* Tensor::data<T>();          \
  template const T* Tensor::data<T>() const; \
  template T* Tensor::device_data<T>() const;
MOE_INST_DATA(float)
MOE_INST_DATA(double)
MOE_INST_DATA(bf16)
MOE_INST_DATA(int32_t)
MOE_INST_DATA(int64_t)
#undef MOE_INST_DATA

void* Tensor::raw_data() const {
  check_on_host(*this, "Tensor::raw_data");
  return raw_device_data();
}

void* Tensor::raw_device_data() const {
  return static_cast<char*>(impl_->storage->data) + impl_->offset * int64_t(dtype_size(dtype()));
}

namespace {
double load_double(const void* p, DType dt) {
  switch (dt) {
    case DType::f32: return *static_cast<const float*>(p);
    case DType::f64: return *static_cast<const double*>(p);
    case DType::bf16: return bf16_to_float(*static_cast<const bf16*>(p));
    case DType::i32: return *static_cast<const int32_t*>(p);
    case DType::i64: return double(*static_cast<const int64_t*>(p));
  }
  return 0;
}
void store_double(void* p, DType dt, double v) {
  switch (dt) {
    case DType::f32: *static_cast<float*>(p) = float(v); break;
    case DType::f64: *static_cast<double*>(p) = v; break;
    case DType::bf16: *static_cast<bf16*>(p) = float_to_bf16(float(v)); break;
    case DType::i32: *static_cast<int32_t*>(p) = int32_t(v); break;
    case DType::i64: *static_cast<int64_t*>(p) = int64_t(v); break;
  }
}

// Calls f(dst_elem_offset, src_elem_offset) for every element of `shape`, row-major.
template <class F>
void for_each_pair(const Shape& shape, const Shape& dst_strides, const Shape& src_strides, F&& f) {
  int64_t nd = int64_t(shape.size());
  int64_t n = shape_numel(shape);
  if (n == 0) return;
  std::vector<int64_t> idx(nd, 0);
  int64_t d_off = 0, s_off = 0;
  for (int64_t i = 0; i < n; ++i) {
    f(d_off, s_off);
    for (int64_t k = nd - 1; k >= 0; --k) {
      if (++idx[k] < shape[k]) {
        d_off += dst_strides[k];
        s_off += src_strides[k];
        break;
      }
      d_off -= dst_strides[k] * (shape[k] - 1);
      s_off -= src_strides[k] * (shape[k] - 1);
      idx[k] = 0;
    }
  }
}
}  // namespace

template <class T>
T Tensor::item() const {
  MOE_CHECK(numel() == 1, "Tensor::item", "expected one element, got shape ", shape_str());
  if (device() != Device::cpu) return to(Device::cpu).item<T>();
  return *data<T>();
}
template float Tensor::item<float>() const;
template double Tensor::item<double>() const;
template int32_t Tensor::item<int32_t>() const;
template int64_t Tensor::item<int64_t>() const;

double Tensor::item_double() const {
  MOE_CHECK(numel() == 1, "Tensor::item", "expected one element, got shape ", shape_str());
  if (device() != Device::cpu) return to(Device::cpu).item_double();
  return load_double(raw_data(), dtype());
}

template <class T>
std::vector<T> Tensor::to_vector() const {
  if (device() != Device::cpu) return to(Device::cpu).to_vector<T>();
  Tensor c = contiguous();
  const T* p = c.data<T>();
  return std::vector<T>(p, p + c.numel());
}
template std::vector<float> Tensor::to_vector<float>() const;
template std::vector<double> Tensor::to_vector<double>() const;
template std::vector<int32_t> Tensor::to_vector<int32_t>() const;
template std::vector<int64_t> Tensor::to_vector<int64_t>() const;

std::vector<double> Tensor::to_double_vector() const {
  if (device() != Device::cpu) return to(Device::cpu).to_double_vector();
  Tensor c = contiguous();
  std::vector<double> out(size_t(c.numel()));
  const char* base = static_cast<const char*>(c.raw_data());
  size_t es = dtype_size(dtype());
  for (size_t i = 0; i < out.size(); ++i) out[i] = load_double(base + i * es, dtype());
  return out;
}

// ---------------------------------------------------------------- copies

namespace {
// A copy with the device on either side. The backend copies and converts within the device;
// between host and device only contiguous bytes of one dtype travel, so a view or a dtype
// change is first made contiguous on the side that has it.
void copy_across_devices(Tensor& dst, const Tensor& src) {
  CudaBackend& be = cuda_backend("copy_");
  if (dst.device() == Device::cuda && src.device() == Device::cuda) {
    be.copy(dst, src);
    return;
  }
  const size_t bytes = size_t(dst.numel()) * dtype_size(dst.dtype());
  if (src.device() == Device::cpu) {  // host -> device
    Tensor s = src.dtype() == dst.dtype() ? src.detach().contiguous() : src.detach().to(dst.dtype());
    if (dst.is_contiguous()) {
      be.copy_bytes(dst.raw_device_data(), s.raw_device_data(), bytes, CopyKind::host_to_device);
    } else {
      Tensor staged = Tensor::empty(dst.shape(), dst.dtype(), Device::cuda);
      be.copy_bytes(staged.raw_device_data(), s.raw_device_data(), bytes, CopyKind::host_to_device);
      be.copy(dst, staged);
    }
    return;
  }
  // device -> host
  Tensor s = src;
  if (!src.is_contiguous() || src.dtype() != dst.dtype()) {
    s = Tensor::empty(src.shape(), dst.dtype(), Device::cuda);
    be.copy(s, src);
  }
  if (dst.is_contiguous()) {
    be.copy_bytes(dst.raw_device_data(), s.raw_device_data(), bytes, CopyKind::device_to_host);
  } else {
    Tensor staged = Tensor::empty(dst.shape(), dst.dtype());
    be.copy_bytes(staged.raw_device_data(), s.raw_device_data(), bytes, CopyKind::device_to_host);
    dst.copy_(staged);
  }
}
}  // namespace

void Tensor::copy_(const Tensor& src) {
  MOE_CHECK(src.shape() == shape(), "copy_", "shape mismatch: destination ", shape_str(), " vs source ",
            src.shape_str());
  if (device() != Device::cpu || src.device() != Device::cpu) {
    copy_across_devices(*this, src);
    return;
  }
  size_t es = dtype_size(dtype());
  char* d = static_cast<char*>(impl_->storage->data);
  const char* s = static_cast<const char*>(src.impl_->storage->data);
  if (src.dtype() == dtype()) {
    if (is_contiguous() && src.is_contiguous()) {
      std::memmove(raw_data(), src.raw_data(), size_t(numel()) * es);
      return;
    }
    // Rows that are contiguous in both views (e.g. the head dim of an attention transpose) go
    // as one memcpy each; only the outer dims are walked element by element.
    if (dim() >= 1 && strides().back() == 1 && src.strides().back() == 1 && shape().back() > 1) {
      Shape outer(shape().begin(), shape().end() - 1);
      Shape dst_outer(strides().begin(), strides().end() - 1), src_outer(src.strides().begin(), src.strides().end() - 1);
      size_t row_bytes = size_t(shape().back()) * es;
      for_each_pair(outer, dst_outer, src_outer, [&](int64_t doff, int64_t soff) {
        std::memcpy(d + (impl_->offset + doff) * es, s + (src.offset() + soff) * es, row_bytes);
      });
      return;
    }
    for_each_pair(shape(), strides(), src.strides(), [&](int64_t doff, int64_t soff) {
      std::memcpy(d + (impl_->offset + doff) * es, s + (src.offset() + soff) * es, es);
    });
    return;
  }
  size_t ses = dtype_size(src.dtype());
  for_each_pair(shape(), strides(), src.strides(), [&](int64_t doff, int64_t soff) {
    store_double(d + (impl_->offset + doff) * es, dtype(), load_double(s + (src.offset() + soff) * ses, src.dtype()));
  });
}

void Tensor::fill_(double value) {
  if (device() != Device::cpu) {
    cuda_backend("Tensor::fill_").fill(*this, value);
    return;
  }
  size_t es = dtype_size(dtype());
  if (is_contiguous()) {
    char* p = static_cast<char*>(raw_data());
    int64_t n = numel();
    switch (dtype()) {
      case DType::f32: std::fill_n(reinterpret_cast<float*>(p), n, float(value)); return;
      case DType::f64: std::fill_n(reinterpret_cast<double*>(p), n, value); return;
      default:
        for (int64_t i = 0; i < n; ++i) store_double(p + i * es, dtype(), value);
        return;
    }
  }
  char* d = static_cast<char*>(impl_->storage->data);
  for_each_pair(shape(), strides(), strides(), [&](int64_t doff, int64_t) {
    store_double(d + (impl_->offset + doff) * es, dtype(), value);
  });
}

Tensor Tensor::clone() const {
  Tensor out = empty(shape(), dtype(), device());
  out.copy_(*this);
  return out;
}

Tensor Tensor::detach() const {
  auto impl = std::make_shared<TensorImpl>(*impl_);
  impl->requires_grad = false;
  impl->grad.reset();
  return Tensor(std::move(impl));
}

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  Tensor out = clone();
  if (needs_grad({*this})) {
    Tensor self = *this;
    record("contiguous", {out}, [self](const std::vector<Tensor>& g) { accumulate_grad(self, g[0]); });
  }
  return out;
}

Tensor Tensor::to(DType dt) const {
  if (dt == dtype()) return *this;
  Tensor out = empty(shape(), dt, device());
  out.copy_(*this);
  if (is_floating(dt) && is_floating(dtype()) && needs_grad({*this})) {
    Tensor self = *this;
    record("to", {out}, [self](const std::vector<Tensor>& g) { accumulate_grad(self, g[0].to(self.dtype())); });
  }
  return out;
}

Tensor Tensor::to(Device dev) const {
  if (dev == device()) return *this;
  Tensor out = empty(shape(), dtype(), dev);
  out.copy_(*this);
  if (is_floating(dtype()) && needs_grad({*this})) {
    Tensor self = *this;
    record("to_device", {out}, [self](const std::vector<Tensor>& g) { accumulate_grad(self, g[0].to(self.device())); });
  }
  return out;
}

Tensor& Tensor::set_requires_grad(bool r) {
  MOE_CHECK(!r || is_floating(dtype()), "set_requires_grad", "tensor '", name(), "' of dtype ",
            dtype_name(dtype()), " cannot require grad");
  impl_->requires_grad = r;
  return *this;
}

// ---------------------------------------------------------------- views

namespace {
Tensor make_view(const Tensor& base, Shape shape, Shape strides, int64_t offset) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = base.impl()->storage;
  impl->shape = std::move(shape);
  impl->strides = std::move(strides);
  impl->offset = offset;
  impl->dtype = base.dtype();
  return Tensor(std::move(impl));
}
}  // namespace

Tensor Tensor::reshape(const Shape& new_shape_in) const {
  Shape new_shape = new_shape_in;
  int64_t infer = -1, known = 1;
  for (size_t i = 0; i < new_shape.size(); ++i) {
    if (new_shape[i] == -1) {
      MOE_CHECK(infer < 0, "reshape", "more than one -1 in ", moe::shape_str(new_shape_in));
      infer = int64_t(i);
    } else {
      known *= new_shape[i];
    }
  }
  if (infer >= 0) {
    MOE_CHECK(known > 0 && numel() % known == 0, "reshape", "cannot reshape ", shape_str(), " to ",
              moe::shape_str(new_shape_in));
    new_shape[infer] = numel() / known;
  }
  MOE_CHECK(shape_numel(new_shape) == numel(), "reshape", "cannot reshape ", shape_str(), " (", numel(),
            " elements) to ", moe::shape_str(new_shape_in));
  Tensor src = contiguous();  // records its own node when it copies
  Tensor out = make_view(src, new_shape, contiguous_strides(new_shape), src.offset());
  if (needs_grad({src})) {
    Shape old = shape();
    record("reshape", {out}, [src, old](const std::vector<Tensor>& g) { accumulate_grad(src, g[0].reshape(old)); });
  }
  return out;
}

Tensor Tensor::transpose(int64_t a, int64_t b) const {
  a = wrap_dim(a, dim(), "transpose");
  b = wrap_dim(b, dim(), "transpose");
  Shape sh = shape(), st = strides();
  std::swap(sh[a], sh[b]);
  std::swap(st[a], st[b]);
  Tensor out = make_view(*this, sh, st, offset());
  if (needs_grad({*this})) {
    Tensor self = *this;
    record("transpose", {out}, [self, a, b](const std::vector<Tensor>& g) {
      accumulate_grad(self, g[0].transpose(a, b).contiguous());
    });
  }
  return out;
}

Tensor Tensor::slice(int64_t d, int64_t start, int64_t end) const {
  d = wrap_dim(d, dim(), "slice");
  MOE_CHECK(0 <= start && start <= end && end <= shape()[d], "slice", "range [", start, ", ", end,
            ") out of bounds for dim ", d, " of shape ", shape_str());
  Shape sh = shape();
  sh[d] = end - start;
  Tensor out = make_view(*this, sh, strides(), offset() + start * strides()[d]);
  if (needs_grad({*this})) {
    Tensor self = *this;
    record("slice", {out}, [self, d, start, end](const std::vector<Tensor>& g) {
      Tensor full_grad = Tensor::zeros(self.shape(), g[0].dtype(), self.device());
      full_grad.slice(d, start, end).copy_(g[0]);
      accumulate_grad(self, full_grad);
    });
  }
  return out;
}

Tensor Tensor::select(int64_t d, int64_t index) const {
  d = wrap_dim(d, dim(), "select");
  MOE_CHECK(index >= 0 && index < shape()[d], "select", "index ", index, " out of range for dim ", d,
            " of shape ", shape_str());
  return slice(d, index, index + 1).squeeze(d);
}

Tensor Tensor::unsqueeze(int64_t d) const {
  d = wrap_dim(d, dim() + 1, "unsqueeze");
  Shape sh = shape();
  sh.insert(sh.begin() + d, 1);
  return reshape(sh);
}

Tensor Tensor::squeeze(int64_t d) const {
  d = wrap_dim(d, dim(), "squeeze");
  MOE_CHECK(shape()[d] == 1, "squeeze", "dim ", d, " of shape ", shape_str(), " is not 1");
  Shape sh = shape();
  sh.erase(sh.begin() + d);
  return reshape(sh);
}

}  // namespace moe
