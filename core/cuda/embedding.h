// Embedding lookup on device pointers and its deterministic backward: the ids are sorted (a stable
// radix sort) so each table row's gradient is summed by one block, in position order.
#pragma once
#include <cstdint>

#include "core/cuda/runtime.h"
#include "core/dtype.h"

namespace moe::cuda {

// out [n, dim] = weight[ids[i]] for weight [vocab, dim] (T = float or bf16). An id outside
// [0, vocab) is an error naming the first such position (the wrapper synchronizes to check).
template <class T>
void embedding_forward(const T* weight, const int64_t* ids, T* out, long n, long vocab, long dim,
                       cudaStream_t stream = nullptr);

// dweight [vocab, dim] (fp32, overwritten) = sum over positions i with ids[i] = v of dout[i],
// added in increasing i (the order of the CPU op, so fp32 results have the same bits). Ids outside
// [0, vocab) contribute nothing.
template <class T>
void embedding_backward(const T* dout, const int64_t* ids, float* dweight, long n, long vocab, long dim,
                        cudaStream_t stream = nullptr);

}  // namespace moe::cuda
