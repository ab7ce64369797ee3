// concat and split along any dim: each is the other's backward. Both copy whole contiguous runs
// (the [dim, inner) block of every outer row) with memcpy, for any dtype.
#include "core/cpu/concat.h"

#include <cstring>

#include "core/autograd.h"

namespace moe {
namespace {

constexpr int64_t kParallelBytes = 1 << 18;

int64_t prod(const Shape& s, int64_t begin, int64_t end) {
  int64_t n = 1;
  for (int64_t d = begin; d < end; ++d) n *= s[d];
  return n;
}

}  // namespace

Tensor concat(const std::vector<Tensor>& xs, int64_t dim_in) {
  MOE_CHECK(!xs.empty(), "concat", "needs at least one tensor");
  const Tensor& first = xs[0];
  MOE_CHECK(first.dim() >= 1, "concat", "tensors must have at least one dim, got ", first.shape_str());
  int64_t dim = wrap_dim(dim_in, first.dim(), "concat");
  Shape os = first.shape();
  os[dim] = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    const Tensor& x = xs[i];
    MOE_CHECK(x.dtype() == first.dtype(), "concat", "tensor ", i, " has dtype ", dtype_name(x.dtype()),
              ", tensor 0 has ", dtype_name(first.dtype()));
    bool ok = x.dim() == first.dim();
    for (int64_t d = 0; ok && d < x.dim(); ++d) ok = d == dim || x.shape()[d] == first.shape()[d];
    MOE_CHECK(ok, "concat", "tensor ", i, " ", x.shape_str(), " does not match tensor 0 ", first.shape_str(),
              " outside dim ", dim);
    os[dim] += x.shape()[dim];
  }
  Tensor out = Tensor::empty(os, first.dtype());
  int64_t outer = prod(os, 0, dim), inner = prod(os, dim + 1, first.dim());
  size_t esize = dtype_size(first.dtype());
  size_t out_row = size_t(os[dim] * inner) * esize;
  char* o = static_cast<char*>(out.raw_data());
  size_t col = 0;  // byte offset of the current input inside an output row
  for (const Tensor& x : xs) {
    Tensor xc = x.contiguous().detach();
    size_t row = size_t(x.shape()[dim] * inner) * esize;
    const char* s = static_cast<const char*>(xc.raw_data());
    if (row > 0) {
#pragma omp parallel for if (size_t(outer) * row > size_t(kParallelBytes))
      for (int64_t r = 0; r < outer; ++r) std::memcpy(o + size_t(r) * out_row + col, s + size_t(r) * row, row);
    }
    col += row;
  }
  if (needs_grad(xs)) {
    std::vector<int64_t> sizes;
    for (const Tensor& x : xs) sizes.push_back(x.shape()[dim]);
    record("concat", {out}, [xs, sizes, dim](const std::vector<Tensor>& g) {
      std::vector<Tensor> parts = split(g[0], sizes, dim);
      for (size_t i = 0; i < xs.size(); ++i) accumulate_grad(xs[i], parts[i]);
    });
  }
  return out;
}

std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim_in) {
  MOE_CHECK(x.dim() >= 1, "split", "x must have at least one dim, got ", x.shape_str());
  int64_t dim = wrap_dim(dim_in, x.dim(), "split");
  int64_t total = 0;
  for (int64_t s : sizes) {
    MOE_CHECK(s >= 0, "split", "negative size ", s, " for x ", x.shape_str());
    total += s;
  }
  MOE_CHECK(total == x.shape()[dim], "split", "sizes sum to ", total, " but dim ", dim, " of x ", x.shape_str(),
            " is ", x.shape()[dim]);
  Tensor xc = x.contiguous().detach();
  int64_t outer = prod(x.shape(), 0, dim), inner = prod(x.shape(), dim + 1, x.dim());
  size_t esize = dtype_size(x.dtype());
  size_t in_row = size_t(total * inner) * esize;
  const char* s = static_cast<const char*>(xc.raw_data());
  std::vector<Tensor> outs;
  size_t col = 0;
  for (int64_t n : sizes) {
    Shape os = x.shape();
    os[dim] = n;
    Tensor out = Tensor::empty(os, x.dtype());
    size_t row = size_t(n * inner) * esize;
    char* o = static_cast<char*>(out.raw_data());
    if (row > 0) {
#pragma omp parallel for if (size_t(outer) * row > size_t(kParallelBytes))
      for (int64_t r = 0; r < outer; ++r) std::memcpy(o + size_t(r) * row, s + size_t(r) * in_row + col, row);
    }
    col += row;
    outs.push_back(out);
  }
  if (needs_grad({x})) {
    Tensor xs = x;
    record("split", outs, [xs, dim](const std::vector<Tensor>& g) { accumulate_grad(xs, concat(g, dim)); });
  }
  return outs;
}

}  // namespace moe
