// What the step benchmarks share: a seeded batch of token ids and one trainer step without
// logging (forward, backward, global-norm clipping at 1, AdamW at lr 1e-3).
#pragma once
#include <cstdint>
#include <vector>

#include "core/rng.h"
#include "layers/transformer.h"
#include "optim/adamw.h"
#include "optim/clip.h"

namespace moe::bench {

inline Tensor random_ids(int64_t batch, int64_t seq, int64_t vocab, uint64_t seed) {
  Philox rng(seed, stream_id(RngStream::test));
  std::vector<int64_t> v(size_t(batch * seq));
  for (auto& x : v) x = int64_t(rng.below(uint64_t(vocab)));
  return Tensor::from_vector<int64_t>(v, {batch, seq});
}

// Returns the step's total loss (read back, so the step has finished when this returns).
inline float train_step(TransformerLM& model, AdamW& opt, const Tensor& ids, const Tensor& targets) {
  opt.zero_grad();
  LossOutput out = model.loss(ids, targets);
  out.total.backward();
  clip_grad_norm(model.parameters(), 1.0);
  opt.step(1e-3);
  return out.total.item<float>();
}

}  // namespace moe::bench
