// Host side of Hopper's TMA (tensor memory accelerator, core/cuda/tma.h): the tensor map a kernel's
// bulk tensor copies read their global tensor's shape from. On the GPU it is the driver's
// CUtensorMap (encoded by cuTensorMapEncodeTiled, fetched through cudaGetDriverEntryPointByVersion
// so nothing links libcuda); under MOE_CUDA_EMULATION the same 128 bytes hold the emulation's own
// fields (emulation_tma.h reads them). Kernels take it by value as `const __grid_constant__
// TensorMap map` and pass &map to tma::load_2d / load_3d / store_2d: the copy engine reads it from
// the kernel's parameter space, so it must not be copied into registers or local memory.
#pragma once
#include <cstdint>

namespace moe::cuda {

struct alignas(64) TensorMap {
  unsigned char opaque[128];
};
static_assert(sizeof(TensorMap) == 128 && alignof(TensorMap) == 64, "TensorMap must match CUtensorMap");

// A tiled tensor map of bf16 (elem_bytes 2) or fp32 (elem_bytes 4) elements with the 128B swizzle;
// a load reads elements outside the tensor as zeros, a store (tma::store_2d) leaves them unwritten.
// rank 2 or 3; dims and box innermost first (as cuTensorMapEncodeTiled); strides_bytes: the
// rank - 1 byte strides of dims 1.. (multiples of 16, below 2^40); base 16-byte aligned;
// box[0] * elem_bytes must be 128 (the swizzle span: 64 bf16 or 32 fp32), 1 <= box[i] <= 256. A
// bad argument fails with one line naming `op` and the value.
TensorMap make_tensor_map(const void* base, int elem_bytes, int rank, const uint64_t* dims,
                          const uint64_t* strides_bytes, const uint32_t* box, const char* op);
// The bf16 map the kernels' loads read (make_tensor_map with elem_bytes 2).
TensorMap make_tensor_map_bf16(const void* base, int rank, const uint64_t* dims, const uint64_t* strides_bytes,
                               const uint32_t* box, const char* op);

}  // namespace moe::cuda
