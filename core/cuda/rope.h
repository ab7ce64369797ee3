// Rotary position embedding on device pointers (rotate-half convention, as core/cpu/rope.h):
// pair (i, i + Dh/2) of head h at position pos_offset + s is rotated by pos * theta^(-2i/Dh).
#pragma once
#include <cstdint>

#include "core/cuda/runtime.h"
#include "core/dtype.h"

namespace moe::cuda {

// x, out [B, S, H, Dh] contiguous, Dh even; out may alias x. The angle and its sine / cosine are
// computed in double, so long positions keep full fp32 accuracy.
template <class T>
void rope_forward(const T* x, T* out, long batch, long seq, long heads, long head_dim, double theta = 10000.0,
                  int64_t pos_offset = 0, cudaStream_t stream = nullptr);
// The backward is the rotation by the opposite angle.
template <class T>
void rope_backward(const T* dout, T* dx, long batch, long seq, long heads, long head_dim, double theta = 10000.0,
                   int64_t pos_offset = 0, cudaStream_t stream = nullptr);

}  // namespace moe::cuda
