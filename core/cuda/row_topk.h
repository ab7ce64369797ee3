// Per-row top-k by repeated selection, for kernel sources: step s picks the best entry that comes
// after step s-1's pick in the order (value descending, index ascending), so no per-thread pick
// list is needed and ties go to the lower index deterministically (the CPU topk's order).
#pragma once
#include "core/cuda/kernel.h"

namespace moe::cuda {

// The k largest of value(0) .. value(n - 1), in order: out(s, value, index) for s = 0 .. k - 1.
// value(e) is evaluated k times per e: it must return the same bits each time.
template <class Value, class Out>
__device__ __forceinline__ void row_topk(Value value, int n, int k, Out out) {
  float prev_v = INFINITY;
  int prev_i = -1;
  for (int s = 0; s < k; ++s) {
    float best_v = -INFINITY;
    int best_i = -1;
    for (int e = 0; e < n; ++e) {
      const float v = value(e);
      const bool after_prev = v < prev_v || (v == prev_v && e > prev_i);
      if (after_prev && (best_i < 0 || v > best_v)) best_v = v, best_i = e;
    }
    out(s, best_v, best_i);
    prev_v = best_v;
    prev_i = best_i;
  }
}

}  // namespace moe::cuda
