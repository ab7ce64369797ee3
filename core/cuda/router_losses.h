// Router loss and balancer-state kernels on device pointers: the router z-loss, the Switch
// auxiliary loss (layers/moe/balance/aux_math.h) and the loss-free bias update, forward and backward.
#pragma once
#include <cstdint>

#include "core/cuda/runtime.h"

namespace moe::cuda {

// z = mean_t (logsumexp_e logits[t, :])^2 for logits [tokens, experts] (fp32); writes lse [tokens]
// (kept for the backward) and loss [1]. The mean adds rows in a fixed order (deterministic).
void router_z_loss_forward(const float* logits, long tokens, int experts, float* lse, float* loss,
                           cudaStream_t stream = nullptr);
// dlogits [tokens, experts] = dloss * 2 lse_t softmax(logits_t) / tokens.
void router_z_loss_backward(const float* logits, const float* lse, float dloss, long tokens, int experts,
                            float* dlogits, cudaStream_t stream = nullptr);

// Switch loss E * sum_e f_e P_e with f_e = loads[e] / total (constants: assignment counts, e.g.
// from load_histogram) and P_e = mean over tokens of probs[:, e]; writes loss [1].
void switch_aux_forward(const float* probs, const int32_t* loads, double total, long tokens, int experts, float* loss,
                        cudaStream_t stream = nullptr);
// dprobs [tokens, experts] = dloss * E * f_e / tokens (the loss is linear in probs).
void switch_aux_backward(const int32_t* loads, double total, float dloss, long tokens, int experts, float* dprobs,
                         cudaStream_t stream = nullptr);

// DeepSeek's sequence-wise form (per_sequence_aux of aux_math.h): the Switch product per sequence
// of seq_len rows, f from that sequence's loads [B, experts] over per_sequence_total assignments,
// averaged over the B = tokens / seq_len sequences. seq_len = tokens is switch_aux.
void sequence_aux_forward(const float* probs, const int32_t* seq_loads, double per_sequence_total, long tokens,
                          long seq_len, int experts, float* loss, cudaStream_t stream = nullptr);
void sequence_aux_backward(const int32_t* seq_loads, double per_sequence_total, float dloss, long tokens, long seq_len,
                           int experts, float* dprobs, cudaStream_t stream = nullptr);

// The loss-free balancer's update of bias [experts] (fp32, in place) from the global batch's loads
// (exact integers as fp32), as LossFreeBalancer::update: m = mean load (double), then
//   sign:         b_e += u * sign(m - load_e)
//   proportional: b_e += u * (m - load_e) / m
// with the CPU's fp32 step arithmetic, so the bias has the same bits.
void loss_free_bias_update(const float* loads, int experts, float rate, bool sign, float* bias,
                           cudaStream_t stream = nullptr);

}  // namespace moe::cuda
