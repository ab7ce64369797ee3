// Token embedding layer: a [vocab, dim] table looked up by integer ids.
#pragma once
#include "core/rng.h"
#include "layers/module.h"

namespace moe {

class Embedding : public Module {
 public:
  Embedding(int64_t num_embeddings, int64_t dim, Philox& rng, double init_std, DType dtype = DType::f32);

  Tensor forward(const Tensor& ids) const;  // ids [...] (i32/i64) -> [..., dim]

  const Tensor& weight() const { return weight_; }
  int64_t num_embeddings() const { return weight_.size(0); }
  int64_t dim() const { return weight_.size(1); }

 private:
  Tensor weight_;
};

}  // namespace moe
