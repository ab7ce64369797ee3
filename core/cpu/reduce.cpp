// Sums and means over any set of dims. The input is viewed as [outer, reduced, inner] after
// moving reduced dims together; accumulation is in double order-fixed loops (deterministic).
#include "core/cpu/reduce.h"

#include <algorithm>
#include <limits>

#include "core/autograd.h"
#include "core/cpu/elementwise.h"
#include "core/dispatch.h"

namespace moe {
namespace {

std::vector<int64_t> normalize_dims(const std::vector<int64_t>& dims, int64_t nd, const char* op) {
  std::vector<int64_t> out;
  for (int64_t d : dims) out.push_back(wrap_dim(d, nd, op));
  std::sort(out.begin(), out.end());
  MOE_CHECK(std::adjacent_find(out.begin(), out.end()) == out.end(), op, "repeated dim in reduction");
  return out;
}

Shape reduced_shape(const Shape& s, const std::vector<int64_t>& dims, bool keepdim) {
  Shape out;
  for (int64_t i = 0; i < int64_t(s.size()); ++i) {
    bool r = std::binary_search(dims.begin(), dims.end(), i);
    if (!r) out.push_back(s[i]);
    else if (keepdim) out.push_back(1);
  }
  return out;
}

// Raw sum (no autograd) of contiguous x over sorted dims, result with keepdim shape.
Tensor sum_kernel(const Tensor& x_in, const std::vector<int64_t>& dims) {
  Tensor x = x_in.contiguous();
  Shape keep = reduced_shape(x.shape(), dims, true);
  Tensor out = Tensor::zeros(keep, x.dtype());
  int64_t nd = x.dim();
  if (x.numel() == 0) return out;
  dispatch_float(x.dtype(), "sum", [&](auto tag) {
    using T = decltype(tag);
    const T* px = x.data<T>();
    T* po = out.data<T>();
    // Fast path: a contiguous suffix of dims is reduced -> rows.
    bool suffix = !dims.empty();
    for (size_t i = 0; i < dims.size(); ++i) suffix = suffix && dims[i] == nd - int64_t(dims.size()) + int64_t(i);
    if (suffix) {
      int64_t inner = 1;
      for (int64_t d : dims) inner *= x.shape()[d];
      int64_t rows = x.numel() / inner;
#pragma omp parallel for if (rows * inner > 65536)
      for (int64_t r = 0; r < rows; ++r) {
        double acc = 0;
        const T* p = px + r * inner;
        for (int64_t j = 0; j < inner; ++j) acc += p[j];
        po[r] = T(acc);
      }
      return;
    }
    // General case: walk x once, adding each element into its output slot.
    Shape ost = contiguous_strides(keep);
    for (int64_t d : dims) ost[d] = 0;
    std::vector<double> acc(size_t(out.numel()), 0.0);
    std::vector<int64_t> idx(size_t(nd), 0);
    int64_t o = 0;
    for (int64_t i = 0, n = x.numel(); i < n; ++i) {
      acc[size_t(o)] += px[i];
      for (int64_t k = nd - 1; k >= 0; --k) {
        if (++idx[k] < x.shape()[k]) {
          o += ost[k];
          break;
        }
        o -= ost[k] * (x.shape()[k] - 1);
        idx[k] = 0;
      }
    }
    for (size_t i = 0; i < acc.size(); ++i) po[i] = T(acc[i]);
  });
  return out;
}

// Expands g (keepdim shape) back to `shape` by broadcasting.
Tensor expand_to(const Tensor& g, const Shape& shape) {
  Tensor z = Tensor::zeros(shape, g.dtype());
  NoGradGuard ng;
  return add(z, g);
}

}  // namespace

Tensor sum(const Tensor& x, const std::vector<int64_t>& dims_in, bool keepdim) {
  auto dims = normalize_dims(dims_in, x.dim(), "sum");
  Tensor out = sum_kernel(x, dims);
  Shape keep_shape = out.shape();
  if (!keepdim) {
    Shape s = reduced_shape(x.shape(), dims, false);
    out = out.detach().reshape(s);
  }
  if (needs_grad({x}))
    record("sum", {out}, [x, keep_shape](const std::vector<Tensor>& g) {
      accumulate_grad(x, expand_to(g[0].reshape(keep_shape), x.shape()));
    });
  return out;
}

Tensor mean(const Tensor& x, const std::vector<int64_t>& dims_in, bool keepdim) {
  auto dims = normalize_dims(dims_in, x.dim(), "mean");
  int64_t count = 1;
  for (int64_t d : dims) count *= x.shape()[d];
  return mul_scalar(sum(x, dims, keepdim), count ? 1.0 / double(count) : 0.0);
}

Tensor sum_all(const Tensor& x) {
  std::vector<int64_t> dims(size_t(x.dim()));
  for (int64_t i = 0; i < x.dim(); ++i) dims[size_t(i)] = i;
  if (dims.empty()) return x;
  return sum(x, dims, false);
}

Tensor mean_all(const Tensor& x) {
  MOE_CHECK(x.numel() > 0, "mean_all", "empty tensor ", x.shape_str());
  return mul_scalar(sum_all(x), 1.0 / double(x.numel()));
}

Tensor sum_to(const Tensor& x, const Shape& shape) {
  if (x.shape() == shape) return x;
  MOE_CHECK(int64_t(shape.size()) <= x.dim(), "sum_to", "cannot reduce ", x.shape_str(), " to ", shape_str(shape));
  int64_t lead = x.dim() - int64_t(shape.size());
  std::vector<int64_t> dims;
  for (int64_t i = 0; i < x.dim(); ++i) {
    if (i < lead) dims.push_back(i);
    else if (shape[size_t(i - lead)] == 1 && x.shape()[i] != 1) dims.push_back(i);
    else MOE_CHECK(shape[size_t(i - lead)] == x.shape()[i], "sum_to", "cannot reduce ", x.shape_str(), " to ", shape_str(shape));
  }
  return sum(x, dims, true).reshape(shape);
}

Tensor amax(const Tensor& x_in, int64_t dim, bool keepdim) {
  dim = wrap_dim(dim, x_in.dim(), "amax");
  Tensor x = x_in.contiguous();
  Shape keep = reduced_shape(x.shape(), {dim}, true);
  Tensor out = Tensor::empty(keep, x.dtype());
  int64_t outer = 1, inner = 1, n = x.shape()[dim];
  for (int64_t i = 0; i < dim; ++i) outer *= x.shape()[i];
  for (int64_t i = dim + 1; i < x.dim(); ++i) inner *= x.shape()[i];
  MOE_CHECK(n > 0, "amax", "empty dim ", dim, " in ", x.shape_str());
  dispatch_float(x.dtype(), "amax", [&](auto tag) {
    using T = decltype(tag);
    const T* px = x.data<T>();
    T* po = out.data<T>();
    for (int64_t o = 0; o < outer; ++o)
      for (int64_t i = 0; i < inner; ++i) {
        T m = -std::numeric_limits<T>::infinity();
        for (int64_t j = 0; j < n; ++j) m = std::max(m, px[(o * n + j) * inner + i]);
        po[o * inner + i] = m;
      }
  });
  if (!keepdim) out = out.reshape(reduced_shape(x.shape(), {dim}, false));
  return out;
}

}  // namespace moe
