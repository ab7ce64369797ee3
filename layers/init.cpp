// Deterministic normal initialization (see init.h).
#include "layers/init.h"

#include <cmath>

#include "core/dispatch.h"

namespace moe {

void init_normal_(Tensor& t, Philox& rng, double std) {
  MOE_CHECK(t.is_contiguous(), "init_normal_", "tensor '", t.name(), "' ", t.shape_str(), " must be contiguous");
  dispatch_float(t.dtype(), "init_normal_", [&](auto tag) {
    using T = decltype(tag);
    T* p = t.data<T>();
    for (int64_t i = 0, n = t.numel(); i < n; ++i) p[i] = T(rng.normal() * std);
  });
}

double output_proj_std(const ModelConfig& cfg) {
  return cfg.init_std / std::sqrt(2.0 * double(std::max<int64_t>(cfg.n_layers, 1)));
}

}  // namespace moe
