// Fused cross-entropy on device pointers: log-softmax and NLL per row in one pass, a deterministic
// mean over rows whose target is not ignore_index, and the fused backward (softmax - onehot).
#pragma once
#include <cstdint>

#include "core/cuda/runtime.h"
#include "core/dtype.h"

namespace moe::cuda {

// logits [rows, vocab] (T), targets [rows] (i64). Writes lse [rows] (saved for backward) and
// stats [2] = {mean loss, number of counted rows}; the mean is 0 when every row is ignored. A
// target outside [0, vocab) that is not ignore_index makes the loss NaN (checked on the host by
// the caller that reads it).
template <class T>
void cross_entropy_forward(const T* logits, const int64_t* targets, float* lse, float* stats, long rows, long vocab,
                           int64_t ignore_index = -100, cudaStream_t stream = nullptr);
// dlogits = dloss / count * (softmax(logits) - onehot(target)); ignored rows get 0.
template <class T>
void cross_entropy_backward(const T* logits, const int64_t* targets, const float* lse, const float* stats, float dloss,
                            T* dlogits, long rows, long vocab, int64_t ignore_index = -100,
                            cudaStream_t stream = nullptr);

}  // namespace moe::cuda
