// The Hopper (sm_90a) grouped GEMMs on wgmma (core/cuda/wgmma.h), for grouped_gemm.h's three
// forms; grouped_gemm.cu dispatches to them as grouped_gemm_kernel() says (wgmma4 by default on
// sm_90 GPUs, where all their tests pass and wgmma4 measured fastest; docs/benchmarks.md).
#pragma once
#include <cstdint>
#include <optional>
#include <string>

#include "core/cuda/runtime.h"
#include "core/dtype.h"

namespace moe::cuda {

// The grouped-GEMM kernel MOE_GROUPED_GEMM selects (unset or empty: "wgmma4" on an sm_90 GPU, else
// "mma"): "mma" the mma.sync / cp.async kernel of grouped_gemm.cu; "wgmma" the kernels below with a 5-stage pipeline, 1 block per SM; "wgmma2"
// the same with 3 stages, 2 blocks per SM; "wgmma3" persistent blocks over 128 x 256 tiles
// (grouped_gemm_sm90_persistent.cu); "wgmma4" persistent 128 x 256 tiles fed by TMA, a producer
// warpgroup and two consumer warpgroups on an mbarrier pipeline (grouped_gemm_sm90_tma.cu); "wgmma5"
// the same pipeline with each consumer warpgroup on its own 128 x 128 tile ("pingpong": one's
// products overlap the other's epilogue). Any wgmma choice is an error on a device that is not
// sm_90, and allowed under the emulation (which models sm_90a). Read at every call, so a run can
// switch.
enum class GroupedGemmKernel { mma, wgmma, wgmma2, wgmma3, wgmma4, wgmma5 };
GroupedGemmKernel grouped_gemm_kernel();
bool grouped_gemm_uses_wgmma();  // grouped_gemm_kernel() != mma

// MOE_GROUPED_GEMM = `kernel` for the object's lifetime (the previous value, or none, restored
// after it): how tests and benchmarks run both kernels in one process.
class GroupedGemmKernelScope {
 public:
  explicit GroupedGemmKernelScope(const char* kernel);
  ~GroupedGemmKernelScope();
  GroupedGemmKernelScope(const GroupedGemmKernelScope&) = delete;
  GroupedGemmKernelScope& operator=(const GroupedGemmKernelScope&) = delete;

 private:
  std::optional<std::string> old_;
};

// Rows of 128-row tiles as grouped_gemm.cu's: 128-row tile `tile` belongs to the expert e with
// tile_starts[e] <= tile < tile_starts[e + 1] (device int32 [experts + 1]).
inline constexpr int kSm90TileRows = 128;

// The row forms on wgmma, with grouped_gemm.cu's launch_rows contract: C[r, :] (+)= A[r, :] op(B_e),
// A [rows, k_red]; kTransB (nt): B [experts, n_out, k_red], else (nn) B [experts, k_red, n_out].
// Needs A and B 16-byte aligned with row strides a multiple of 8 elements (the caller falls back
// to the mma kernel otherwise).
template <bool kTransB, class Tout>
void grouped_rows_sm90(const bf16* A, const bf16* B, const int32_t* offsets, const int32_t* tile_starts, int experts,
                       long rows, long n_out, long k_red, Tout* C, bool accumulate, cudaStream_t stream);

// grouped_gemm_tn on wgmma: dw[e] (+)= dy_e^T x_e, dy [rows, M], x [rows, K], dw [experts, M, K];
// dy and x 16-byte aligned, M and K multiples of 8.
template <class Tout>
void grouped_gemm_tn_sm90(const bf16* dy, const bf16* x, const int32_t* offsets, int experts, long M, long K,
                          Tout* dw, bool accumulate, cudaStream_t stream);

}  // namespace moe::cuda
