// Token embedding layer (see embedding_layer.h).
#include "layers/embedding_layer.h"

#include "core/cpu/embedding.h"
#include "layers/init.h"

namespace moe {

Embedding::Embedding(int64_t num_embeddings, int64_t dim, Philox& rng, double init_std, DType dtype) {
  MOE_CHECK(num_embeddings > 0 && dim > 0, "Embedding", "sizes must be positive, got [", num_embeddings, ", ", dim,
            "]");
  Tensor w = Tensor::empty({num_embeddings, dim}, dtype);
  init_normal_(w, rng, init_std);
  weight_ = register_parameter("weight", w);
}

Tensor Embedding::forward(const Tensor& ids) const { return embedding(weight_, ids); }

}  // namespace moe
