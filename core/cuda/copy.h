// Strided copy with dtype conversion, and fill: what Tensor::copy_, contiguous(), to(dtype) and
// fill_ need for a tensor on the device (views of up to kMaxCopyDims dims).
#pragma once
#include <cstdint>

#include "core/cuda/runtime.h"
#include "core/dtype.h"

namespace moe::cuda {

constexpr int kMaxCopyDims = 8;

struct StridedView {
  void* data = nullptr;  // at the view's offset
  DType dtype = DType::f32;
  int64_t strides[kMaxCopyDims] = {};  // in elements
};

// dst[i] = convert(src[i]) over `shape` (row-major index i). Floating <-> floating converts through
// double (bf16 rounds to nearest even); index <-> index through int64. Mixing floating and index
// dtypes throws.
void strided_copy(const StridedView& dst, const StridedView& src, const int64_t* shape, int ndim,
                  cudaStream_t stream = nullptr);
void fill(const StridedView& dst, const int64_t* shape, int ndim, double value, cudaStream_t stream = nullptr);

}  // namespace moe::cuda
