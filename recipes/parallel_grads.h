// Gradient reduction and clipping across training processes: bucketed all-reduce of a list of
// parameters' grads over one communicator, and the global clipping norm under expert parallelism.
#pragma once
#include <vector>

#include "core/tensor.h"
#include "parallel/communicator.h"

namespace moe {

// Replaces every parameter's grad by scale x (the sum of that grad over the ranks of comm), in
// buckets of up to 4 Mi elements, parameters in list order (identical on every rank; a
// collective). A grad undefined on every rank stays undefined (as in one process); defined on
// some rank, the missing ones count as zeros. All parameters must share one floating dtype.
// With one rank and scale 1 nothing happens. Grads on the cuda device (fp32) are packed and scaled
// on the device; comm sums them in place when it takes device buffers (NCCL), else through one
// host copy each way.
void all_reduce_grads(const std::vector<Tensor>& params, Communicator& comm, double scale);

// The L2 norm of the grads of the whole model when each rank holds the replicated (dense)
// parameters' grads and its EP-group slice of the experts: sqrt(|dense|^2 + sum over the ranks
// of ep_group of |expert slice|^2) (a collective over ep_group). Grads may be on the host or the
// cuda device (sums of squares there; one double exchanged).
double expert_parallel_grad_norm(const std::vector<Tensor>& dense, const std::vector<Tensor>& experts,
                                 Communicator& ep_group);
// That norm, then clipping as clip_grad_norm (optim/clip.h): when the norm exceeds max_norm > 0
// every grad is replaced by grad * max_norm / (norm + 1e-6). Returns the pre-clip norm; a
// non-finite norm changes nothing.
double clip_grad_norm_expert_parallel(const std::vector<Tensor>& dense, const std::vector<Tensor>& experts,
                                      Communicator& ep_group, double max_norm);

}  // namespace moe
