// The Hopper (sm_90a) grouped GEMM on wgmma (core/cuda/wgmma.h), for the forward form nt of
// grouped_gemm.h; grouped_gemm_nt dispatches to it when MOE_GROUPED_GEMM=wgmma (opt-in: the
// default stays the mma kernel of grouped_gemm.cu until the wgmma kernel is proven on a GPU).
#pragma once
#include <cstdint>

#include "core/cuda/runtime.h"
#include "core/dtype.h"

namespace moe::cuda {

// The grouped-GEMM kernel MOE_GROUPED_GEMM selects: "mma" (or unset) the wmma / cp.async kernel of
// grouped_gemm.cu, "wgmma" the kernel below (an error on a device that is not sm_90; allowed
// under the emulation, which models sm_90a). Read at every call, so a run can switch.
bool grouped_gemm_uses_wgmma();

// Rows of 128-row tiles as grouped_gemm.cu's: 128-row tile `tile` belongs to the expert e with
// tile_starts[e] <= tile < tile_starts[e + 1] (device int32 [experts + 1]).
inline constexpr int kSm90TileRows = 128;

// y[r, :] (+)= x[r, :] w[e]^T per expert group (grouped_gemm_nt's contract), x [rows, K],
// w [experts, M, K], y [rows, M]. Needs x and w 16-byte aligned and K a multiple of 8 (the
// caller falls back to the mma kernel otherwise).
template <class Tout>
void grouped_gemm_nt_sm90(const bf16* x, const bf16* w, const int32_t* offsets, const int32_t* tile_starts,
                          int experts, long rows, long M, long K, Tout* y, bool accumulate, cudaStream_t stream);

}  // namespace moe::cuda
