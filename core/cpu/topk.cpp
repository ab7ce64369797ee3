// Top-k along the last dim by partial selection (nth_element, then sorting only the k winners),
// ordered by (value descending, index ascending) so ties and repeated runs give the same answer.
#include "core/cpu/topk.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "core/autograd.h"
#include "core/cpu/index.h"
#include "core/dispatch.h"

namespace moe {

TopK topk(const Tensor& x, int64_t k) {
  MOE_CHECK(x.dim() >= 1, "topk", "x must have at least one dim, got ", x.shape_str());
  int64_t n = x.size(-1);
  MOE_CHECK(k >= 1 && k <= n, "topk", "k = ", k, " must be in [1, ", n, "] for x ", x.shape_str());
  Tensor xc = x.contiguous().detach();
  Shape os = x.shape();
  os.back() = k;
  Tensor values = Tensor::empty(os, x.dtype());
  Tensor indices = Tensor::empty(os, DType::i64);
  int64_t rows = n ? x.numel() / n : 0;
  dispatch_float(x.dtype(), "topk", [&](auto tag) {
    using T = decltype(tag);
    const T* xp = xc.data<T>();
    T* vp = values.data<T>();
    int64_t* ip = indices.data<int64_t>();
#pragma omp parallel if (rows * n > 16384)
    {
      std::vector<int64_t> order(static_cast<size_t>(n));  // per-thread scratch
#pragma omp for
      for (int64_t r = 0; r < rows; ++r) {
        const T* row = xp + r * n;
        // NaN ranks above every number (as in PyTorch), which also keeps the order strict-weak.
        auto before = [row](int64_t a, int64_t b) {
          bool na = std::isnan(row[a]), nb = std::isnan(row[b]);
          if (na != nb) return na;
          if (!na && row[a] != row[b]) return row[a] > row[b];
          return a < b;
        };
        std::iota(order.begin(), order.end(), int64_t(0));
        if (k < n) std::nth_element(order.begin(), order.begin() + (k - 1), order.end(), before);
        std::sort(order.begin(), order.begin() + k, before);
        for (int64_t j = 0; j < k; ++j) {
          ip[r * k + j] = order[size_t(j)];
          vp[r * k + j] = row[order[size_t(j)]];
        }
      }
    }
  });
  if (needs_grad({x})) {
    Tensor xs = x;
    record("topk", {values}, [xs, indices](const std::vector<Tensor>& g) {
      // Selected positions within a row are distinct, so this is a plain scatter.
      accumulate_grad(xs, scatter_add(Tensor::zeros(xs.shape(), g[0].dtype()), -1, indices, g[0]));
    });
  }
  return TopK{values, indices};
}

}  // namespace moe
