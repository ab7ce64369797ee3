// Kernels that exercise core/cuda/tma.h end to end, for the tests (tests/cuda/tma_test.cpp on the
// GPU and under the emulation, emulation_tma_test.cpp's planted bugs): one TMA box copied out of
// shared memory as it landed, one staged box stored by a bulk tensor store, and a warp-specialized TMA + wgmma pipeline (1 producer warp, 2
// consumer warpgroups, 3 stages, full and empty mbarriers), the shape of an sm_90 GEMM mainloop.
#pragma once
#include <cstdint>
#include <string>

#include "core/cuda/runtime.h"
#include "core/cuda/tensor_map.h"
#include "core/dtype.h"

namespace moe::cuda {

// Whether the TMA kernels can run: under the emulation always; on a GPU an sm_90 device (else
// false, with the reason in `why`).
bool tma_available(std::string& why);

// One TMA load of map's box at coords (rank 2 or 3; coords innermost first) into 1024-byte aligned
// shared memory; out (device, box_elements uint16) receives the shared bytes as they landed.
void tma_load_box(const TensorMap& map, int rank, const int* coords, uint32_t box_elements, uint16_t* out,
                  cudaStream_t stream);

// One TMA store of map's box (rank 2, 128 bytes x rows) from 1024-byte aligned shared memory that
// first receives `image` (device, box_bytes: the box as shared memory holds it, 128B-swizzled) to
// coords (innermost first); elements outside the tensor are not written.
void tma_store_box(const TensorMap& map, const int* coords, const uint32_t* image, uint32_t box_bytes,
                   cudaStream_t stream);

// Bugs the pipeline can plant, for the emulation's tests (the GPU would hang or compute garbage).
enum class TmaPlant : int {
  none = 0,
  consumer_skips_full_wait = 1,  // wgmma reads a stage before its TMA copies landed
  wrong_expect_tx = 2,           // the producer expects 16 bytes more than its copies deliver
  producer_skips_empty_wait = 3  // the producer refills a stage the consumers' wgmma still reads
};

// c[m][n] = sum_k a[m][k] b[n][k] (fp32 out, row-major [m][n]) for m < 128, n < 128, with a
// [m][k] and b [n][k] bf16, row-major with rows of k_stride elements (a multiple of 8): one block
// of 384 threads; K in 64-wide TMA slices (zeros past K, m, n), 3 stages.
void tma_pipeline_gemm(const bf16* a, const bf16* b, int m, int n, int k, int k_stride, float* c, TmaPlant plant,
                       cudaStream_t stream);

}  // namespace moe::cuda
