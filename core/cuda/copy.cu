// Strided copy with conversion, and fill. The host first merges the dims both views step over
// as one (make_dims): a contiguous copy or cast, the common case (weights cast to bf16 every step),
// becomes one dim, and its kernel does no index arithmetic; other views split the row-major index
// into coordinates, so any strides (transposes, slices) copy in one launch.
#include "core/cuda/copy.h"
#include "core/cuda/launch.h"
#include "core/error.h"

namespace moe::cuda {
namespace {

constexpr unsigned kThreads = 256;

struct Dims {
  int64_t shape[kMaxCopyDims];
  int64_t dst_strides[kMaxCopyDims];
  int64_t src_strides[kMaxCopyDims];
  int ndim;
};

template <class T>
__device__ __forceinline__ double load_as_double(const T* p) {
  if constexpr (std::is_same_v<T, dbf16>)
    return double(to_float(*p));
  else
    return double(*p);
}
template <class T>
__device__ __forceinline__ void store_from_double(T* p, double v) {
  if constexpr (std::is_same_v<T, dbf16>)
    *p = from_float<dbf16>(float(v));
  else
    *p = T(v);
}

// One element converted as copy.h states (floating through double, index through int64). Between
// fp32 and bf16 the float path gives the same bits without the double arithmetic: a float widens to
// double and back exactly.
template <class Td, class Ts>
__device__ __forceinline__ void convert(Td* dst, const Ts* src) {
  if constexpr (std::is_same_v<Td, Ts>)
    *dst = *src;
  else if constexpr (std::is_integral_v<Td> && std::is_integral_v<Ts>)
    *dst = Td(*src);
  else if constexpr (!std::is_same_v<Td, double> && !std::is_same_v<Ts, double>)
    *dst = from_float<Td>(to_float(*src));
  else
    store_from_double(dst, load_as_double(src));
}

// The one-dim case: element i at dst[i * dst_stride], src[i * src_stride].
template <class Td, class Ts>
__global__ void linear_copy_kernel(Td* dst, int64_t dst_stride, const Ts* src, int64_t src_stride, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    convert(dst + i * dst_stride, src + i * src_stride);
}

template <class Td, class Ts>
__global__ void strided_copy_kernel(Td* dst, const Ts* src, Dims d, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t rest = i, doff = 0, soff = 0;
    for (int k = d.ndim - 1; k >= 0; --k) {
      const int64_t c = rest % d.shape[k];
      rest /= d.shape[k];
      doff += c * d.dst_strides[k];
      soff += c * d.src_strides[k];
    }
    convert(dst + doff, src + soff);
  }
}

template <class T>
__global__ void fill_kernel(T* dst, Dims d, int64_t n, double value) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t rest = i, doff = 0;
    if (d.ndim == 1)  // no index arithmetic for the common case
      doff = i * d.dst_strides[0];
    else
      for (int k = d.ndim - 1; k >= 0; --k) {
        doff += (rest % d.shape[k]) * d.dst_strides[k];
        rest /= d.shape[k];
      }
    store_from_double(dst + doff, value);
  }
}

// The views' dims with those of extent 1 dropped and each dim merged into the one outside it
// where both views step over the pair as over one dim (outer stride = inner stride x inner extent).
Dims make_dims(const StridedView& dst, const StridedView* src, const int64_t* shape, int ndim, int64_t* n) {
  MOE_CHECK(ndim >= 0 && ndim <= kMaxCopyDims, "cuda::strided_copy", "views of up to ", kMaxCopyDims,
            " dims, got ", ndim);
  Dims d{};
  *n = 1;
  for (int k = 0; k < ndim; ++k) {
    *n *= shape[k];
    if (shape[k] == 1) continue;
    const int64_t ds = dst.strides[k], ss = src ? src->strides[k] : 0;
    const int last = d.ndim - 1;
    if (last >= 0 && d.dst_strides[last] == ds * shape[k] && d.src_strides[last] == ss * shape[k]) {
      d.shape[last] *= shape[k];
      d.dst_strides[last] = ds;
      d.src_strides[last] = ss;
      continue;
    }
    d.shape[d.ndim] = shape[k];
    d.dst_strides[d.ndim] = ds;
    d.src_strides[d.ndim] = ss;
    ++d.ndim;
  }
  if (d.ndim == 0) {  // a scalar, or every extent 1: one element at the views' starts
    d.shape[0] = 1;
    d.ndim = 1;
  }
  return d;
}

unsigned grid_for(int64_t n) {
  int64_t blocks = (n + kThreads - 1) / kThreads;
  return unsigned(blocks < 1 ? 1 : (blocks > 65535 ? 65535 : blocks));
}

// Calls f(T{}) with the device element type of dt.
template <class F>
void with_device_type(DType dt, F&& f) {
  switch (dt) {
    case DType::f32: f(float{}); return;
    case DType::f64: f(double{}); return;
    case DType::bf16: f(dbf16{}); return;
    case DType::i32: f(int32_t{}); return;
    case DType::i64: f(int64_t{}); return;
  }
}

}  // namespace

void strided_copy(const StridedView& dst, const StridedView& src, const int64_t* shape, int ndim,
                  cudaStream_t stream) {
  MOE_CHECK(is_floating(dst.dtype) == is_floating(src.dtype), "cuda::strided_copy", "cannot convert ",
            dtype_name(src.dtype), " to ", dtype_name(dst.dtype), " (floating <-> index)");
  int64_t n = 0;
  Dims d = make_dims(dst, &src, shape, ndim, &n);
  if (n == 0) return;
  with_device_type(dst.dtype, [&](auto dtag) {
    using Td = decltype(dtag);
    with_device_type(src.dtype, [&](auto stag) {
      using Ts = decltype(stag);
      if constexpr (std::is_integral_v<Td> == std::is_integral_v<Ts>) {
        if (d.ndim == 1)
          MOE_LAUNCH((linear_copy_kernel<Td, Ts>), grid_for(n), kThreads, 0, stream, static_cast<Td*>(dst.data),
                     d.dst_strides[0], static_cast<const Ts*>(src.data), d.src_strides[0], n);
        else
          MOE_LAUNCH((strided_copy_kernel<Td, Ts>), grid_for(n), kThreads, 0, stream, static_cast<Td*>(dst.data),
                     static_cast<const Ts*>(src.data), d, n);
      }
    });
  });
}

void fill(const StridedView& dst, const int64_t* shape, int ndim, double value, cudaStream_t stream) {
  int64_t n = 0;
  Dims d = make_dims(dst, nullptr, shape, ndim, &n);
  if (n == 0) return;
  with_device_type(dst.dtype, [&](auto tag) {
    using T = decltype(tag);
    MOE_LAUNCH(fill_kernel<T>, grid_for(n), kThreads, 0, stream, static_cast<T*>(dst.data), d, n, value);
  });
}

}  // namespace moe::cuda
