// Deterministic normal initialization (see init.h).
#include "layers/init.h"

#include <cmath>

#include "core/dispatch.h"

namespace moe {

void init_normal_(Tensor& t, Philox& rng, double std) {
  MOE_CHECK(t.is_contiguous(), "init_normal_", "tensor '", t.name(), "' ", t.shape_str(), " must be contiguous");
  // Counter-based: element i takes Philox block (first + i / 2) and uses the cosine (even i) or
  // sine (odd i) half of one Box-Muller pair, so every element is a pure function of (seed,
  // stream, offset, i) and the loop can run on any number of threads with identical results.
  const uint64_t first = (rng.offset() + 3) / 4;  // the next whole block
  const int64_t n = t.numel();
  const uint64_t seed = rng.seed(), stream = rng.stream();
  dispatch_float(t.dtype(), "init_normal_", [&](auto tag) {
    using T = decltype(tag);
    T* p = t.data<T>();
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; i += 2) {
      const auto w = philox4x32(seed, stream, first + uint64_t(i / 2));
      const uint64_t a = (uint64_t(w[0]) << 32) | w[1], b = (uint64_t(w[2]) << 32) | w[3];
      // (k + 0.5) / 2^53 lies in (0, 1): no log(0).
      const double u1 = (double(a >> 11) + 0.5) * (1.0 / 9007199254740992.0);
      const double u2 = double(b >> 11) * (1.0 / 9007199254740992.0);
      const double r = std::sqrt(-2.0 * std::log(u1)) * std, ang = 2.0 * M_PI * u2;
      p[i] = T(r * std::cos(ang));
      if (i + 1 < n) p[i + 1] = T(r * std::sin(ang));
    }
  });
  rng.set_offset((first + uint64_t((n + 1) / 2)) * 4);
}

double output_proj_std(const ModelConfig& cfg) {
  return cfg.init_std / std::sqrt(2.0 * double(std::max<int64_t>(cfg.n_layers, 1)));
}

}  // namespace moe
