// Embedding lookup (row copies) and its backward, a scatter-add of output rows into the table.
// The backward adds in id order; threads split the D columns, so the result has the same bits on any thread count.
#include "core/cpu/embedding.h"

#include <cstring>
#include <vector>

#include "core/autograd.h"
#include "core/device.h"
#include "core/dispatch.h"

namespace moe {
namespace {

constexpr int64_t kParallelElems = 32768;
constexpr int64_t kColumnBlock = 64;

}  // namespace

Tensor embedding(const Tensor& weight, const Tensor& ids) {
  MOE_CHECK(weight.defined() && ids.defined(), "embedding", "undefined input");
  if (common_device("embedding", {weight, ids}) == Device::cuda) return cuda_backend("embedding").embedding(weight, ids);
  MOE_CHECK(weight.dim() == 2, "embedding", "expected weight [V, D], got ", weight.shape_str(), " (ids ",
            ids.shape_str(), ")");
  int64_t vocab = weight.shape()[0], d = weight.shape()[1], n = ids.numel();
  std::vector<int64_t> idx(static_cast<size_t>(n));
  Tensor ic = ids.contiguous();
  dispatch_index(ids.dtype(), "embedding", [&](auto tag) {
    using I = decltype(tag);
    const I* p = ic.data<I>();
    for (int64_t i = 0; i < n; ++i) idx[size_t(i)] = int64_t(p[i]);
  });
  for (int64_t i = 0; i < n; ++i)
    MOE_CHECK(idx[size_t(i)] >= 0 && idx[size_t(i)] < vocab, "embedding", "id ", idx[size_t(i)], " at position ", i,
              " of ids ", ids.shape_str(), " is outside the vocabulary [0, ", vocab, ") of weight ",
              weight.shape_str());
  Shape out_shape = ids.shape();
  out_shape.push_back(d);
  Tensor wc = weight.detach().contiguous();
  Tensor out = Tensor::empty(out_shape, weight.dtype());
  dispatch_float(weight.dtype(), "embedding", [&](auto tag) {
    using T = decltype(tag);
    const T* w = wc.data<T>();
    T* o = out.data<T>();
#pragma omp parallel for schedule(static) if (n * d > kParallelElems)
    for (int64_t i = 0; i < n; ++i) std::memcpy(o + i * d, w + idx[size_t(i)] * d, size_t(d) * sizeof(T));
  });
  if (needs_grad({weight}))
    record("embedding", {out}, [weight, idx = std::move(idx), n, d](const std::vector<Tensor>& g) {
      Tensor gc = g[0].contiguous();
      Tensor dw = Tensor::zeros(weight.shape(), weight.dtype());
      dispatch_float(weight.dtype(), "embedding", [&](auto tag) {
        using T = decltype(tag);
        const T* pg = gc.data<T>();
        T* pw = dw.data<T>();
        int64_t blocks = (d + kColumnBlock - 1) / kColumnBlock;
        // Each block of columns belongs to one thread and is summed in id order.
#pragma omp parallel for schedule(static) if (n * d > kParallelElems && blocks > 1)
        for (int64_t b = 0; b < blocks; ++b) {
          int64_t c0 = b * kColumnBlock, c1 = std::min(d, c0 + kColumnBlock);
          for (int64_t i = 0; i < n; ++i) {
            T* dst = pw + idx[size_t(i)] * d;
            const T* src = pg + i * d;
#pragma omp simd
            for (int64_t c = c0; c < c1; ++c) dst[c] += src[c];
          }
        }
      });
      accumulate_grad(weight, dw);
    });
  return out;
}

}  // namespace moe
