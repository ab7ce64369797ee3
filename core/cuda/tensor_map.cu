// make_tensor_map (tensor_map.h): the arguments are checked here, in both builds, against
// cuTensorMapEncodeTiled's documented limits and the one layout the kernels use (128B swizzle,
// 64-element inner box), so the emulation refuses what the driver would.
#include "core/cuda/tensor_map.h"

#include <cstring>

#include "core/error.h"

#ifdef MOE_CUDA_EMULATION
#include "core/cuda/emulation_tma.h"
#else
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime_api.h>

#include <mutex>
#endif

namespace moe::cuda {
namespace {

void check_args(const void* base, int elem_bytes, int rank, const uint64_t* dims, const uint64_t* strides_bytes, const uint32_t* box,
                const char* op) {
  MOE_CHECK(rank == 2 || rank == 3, op, "tensor map: rank ", rank, ", expected 2 or 3");
  MOE_CHECK(elem_bytes == 2 || elem_bytes == 4, op, "tensor map: ", elem_bytes,
            "-byte elements, expected 2 (bf16) or 4 (fp32)");
  MOE_CHECK(base != nullptr && reinterpret_cast<uintptr_t>(base) % 16 == 0, op, "tensor map: base address ", base,
            " must be non-null and 16-byte aligned");
  for (int i = 0; i < rank; ++i) {
    MOE_CHECK(dims[i] >= 1 && dims[i] <= (uint64_t(1) << 32), op, "tensor map: dims[", i, "] = ", dims[i],
              ", expected 1 .. 2^32");
    MOE_CHECK(box[i] >= 1 && box[i] <= 256, op, "tensor map: box[", i, "] = ", box[i], ", expected 1 .. 256");
  }
  MOE_CHECK(box[0] * uint32_t(elem_bytes) == 128, op, "tensor map: box[0] = ", box[0], " ", elem_bytes,
            "-byte elements, expected ", 128 / elem_bytes, " (128 bytes, the 128B swizzle span)");
  for (int i = 0; i + 1 < rank; ++i)
    MOE_CHECK(strides_bytes[i] % 16 == 0 && strides_bytes[i] < (uint64_t(1) << 40), op, "tensor map: strides_bytes[",
              i, "] = ", strides_bytes[i], ", expected a multiple of 16 below 2^40");
}

#ifndef MOE_CUDA_EMULATION
// The driver's encoder, fetched once through the runtime (no -lcuda link).
PFN_cuTensorMapEncodeTiled_v12000 encoder(const char* op) {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = nullptr;
  static std::once_flag once;
  static cudaError_t err = cudaSuccess;
  static cudaDriverEntryPointQueryResult status = cudaDriverEntryPointSuccess;
  std::call_once(once, [] {
    void* p = nullptr;
    err = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &status);
    if (err == cudaSuccess && status == cudaDriverEntryPointSuccess) fn = reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(p);
  });
  MOE_CHECK(fn != nullptr, op, "tensor map: cannot get cuTensorMapEncodeTiled from the driver (",
            cudaGetErrorString(err), ", query status ", int(status), ")");
  return fn;
}
#endif

}  // namespace

TensorMap make_tensor_map_bf16(const void* base, int rank, const uint64_t* dims, const uint64_t* strides_bytes,
                               const uint32_t* box, const char* op) {
  return make_tensor_map(base, 2, rank, dims, strides_bytes, box, op);
}

TensorMap make_tensor_map(const void* base, int elem_bytes, int rank, const uint64_t* dims,
                          const uint64_t* strides_bytes, const uint32_t* box, const char* op) {
  check_args(base, elem_bytes, rank, dims, strides_bytes, box, op);
  TensorMap map;
  std::memset(&map, 0, sizeof map);
#ifdef MOE_CUDA_EMULATION
  emu_tma::MapFields f{};
  f.magic = emu_tma::kMapMagic;
  f.rank = uint32_t(rank);
  f.elem = uint32_t(elem_bytes);
  f.base = base;
  for (int i = 0; i < 3; ++i) {
    f.dims[i] = i < rank ? dims[i] : 1;
    f.box[i] = i < rank ? box[i] : 1;
  }
  f.strides[0] = uint64_t(elem_bytes);
  for (int i = 1; i < 3; ++i) f.strides[i] = i < rank ? strides_bytes[i - 1] : 0;
  std::memcpy(map.opaque, &f, sizeof f);
#else
  // CUDA 13 declares CUtensorMap alignas(128); the hardware needs 64 (cuTensorMapEncodeTiled's
  // documented requirement), which TensorMap keeps: encode into a CUtensorMap, then copy.
  static_assert(sizeof(TensorMap) == sizeof(CUtensorMap), "TensorMap must be CUtensorMap's size");
  CUtensorMap encoded;
  cuuint64_t g_dims[3], g_strides[2];
  cuuint32_t g_box[3], element_strides[3] = {1, 1, 1};
  for (int i = 0; i < rank; ++i) {
    g_dims[i] = dims[i];
    g_box[i] = box[i];
    if (i + 1 < rank) g_strides[i] = strides_bytes[i];
  }
  const CUresult res = encoder(op)(&encoded, elem_bytes == 2 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT32,
                                   cuuint32_t(rank), const_cast<void*>(base), g_dims, g_strides, g_box,
                                   element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                   CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  MOE_CHECK(res == CUDA_SUCCESS, op, "tensor map: cuTensorMapEncodeTiled failed with CUresult ", int(res),
            " (rank ", rank, ", dims[0] ", dims[0], ", box[0] ", box[0], ")");
  std::memcpy(&map, &encoded, sizeof map);
#endif
  return map;
}

}  // namespace moe::cuda
