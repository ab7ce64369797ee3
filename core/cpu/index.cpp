// Indexing ops: gather / scatter_add along a dim and index_select / index_add of whole slices, each
// the other's backward. Sums run in a fixed order (ascending source position): bitwise deterministic.
#include "core/cpu/index.h"

#include <cstring>
#include <vector>

#include "core/autograd.h"
#include "core/dispatch.h"

namespace moe {
namespace {

constexpr int64_t kParallelWork = 32768;  // below this, thread start-up costs more than it saves
constexpr int64_t kColumnBlock = 256;     // inner-dim chunk a thread owns when outer rows are few

// Copy ops move bits, so they accept every dtype; arithmetic ops need a type that can add.
template <class F>
decltype(auto) dispatch_copy(DType dt, F&& f) {
  switch (dt) {
    case DType::f32:
      return f(float{});
    case DType::f64:
      return f(double{});
    case DType::bf16:
      return f(uint16_t{});
    case DType::i32:
      return f(int32_t{});
    case DType::i64:
      return f(int64_t{});
  }
  MOE_FAIL("dispatch_copy", "unknown dtype");
}

template <class F>
decltype(auto) dispatch_add(DType dt, const char* op, F&& f) {
  switch (dt) {
    case DType::f32:
      return f(float{});
    case DType::f64:
      return f(double{});
    case DType::i32:
      return f(int32_t{});
    case DType::i64:
      return f(int64_t{});
    default:
      MOE_FAIL(op, "expected dtype f32, f64, i32 or i64, got ", dtype_name(dt));
  }
}

// Element offsets (through `strides`) of every coordinate of dims [begin, end) of `shape`, in row-major order.
std::vector<int64_t> coordinate_offsets(const Shape& shape, const Shape& strides, int64_t begin, int64_t end) {
  std::vector<int64_t> offs{0};
  for (int64_t d = begin; d < end; ++d) {
    std::vector<int64_t> next;
    next.reserve(offs.size() * size_t(shape[d]));
    for (int64_t o : offs)
      for (int64_t i = 0; i < shape[d]; ++i) next.push_back(o + i * strides[d]);
    offs.swap(next);
  }
  return offs;
}

int64_t prod(const Shape& s, int64_t begin, int64_t end) {
  int64_t n = 1;
  for (int64_t d = begin; d < end; ++d) n *= s[d];
  return n;
}

// Indices are validated up front: an exception cannot leave an OpenMP region.
template <class I>
void check_indices(const I* idx, int64_t n, int64_t size, int64_t dim, const char* op, const Tensor& target) {
  for (int64_t i = 0; i < n; ++i)
    MOE_CHECK(idx[i] >= 0 && idx[i] < size, op, "index ", int64_t(idx[i]), " is out of range for dim ", dim,
              " of size ", size, " (tensor ", target.shape_str(), ")");
}

void check_same_rank_index(const Tensor& t, const Tensor& index, int64_t dim, const char* op, const char* what) {
  MOE_CHECK(index.dim() == t.dim(), op, "index ", index.shape_str(), " must have the rank of ", what, " ",
            t.shape_str());
  for (int64_t d = 0; d < t.dim(); ++d)
    MOE_CHECK(d == dim || index.shape()[d] <= t.shape()[d], op, "index ", index.shape_str(), " is larger than ", what,
              " ", t.shape_str(), " in dim ", d);
}

// out[c with c[dim] = index[c]] += src[c] over index's coordinates c; out is contiguous and written in place.
void scatter_add_into(Tensor& out, int64_t dim, const Tensor& index, const Tensor& src) {
  Tensor ic = index.contiguous(), sc = src.contiguous();
  const Shape& is = ic.shape();
  int64_t nd = ic.dim();
  int64_t outer = prod(is, 0, dim), n = is[dim], inner = prod(is, dim + 1, nd);
  if (outer * n * inner == 0) return;
  std::vector<int64_t> ooff = coordinate_offsets(is, out.strides(), 0, dim);
  std::vector<int64_t> toff = coordinate_offsets(is, out.strides(), dim + 1, nd);
  int64_t dstride = out.strides()[dim], dsize = out.shape()[dim];
  // Work items (outer row, inner block) write disjoint parts of out, so they run in parallel;
  // within an item, sources are added in ascending order along dim.
  int64_t block = outer >= 16 ? inner : std::min(inner, kColumnBlock);
  int64_t nblocks = (inner + block - 1) / block, items = outer * nblocks;
  dispatch_index(ic.dtype(), "scatter_add", [&](auto itag) {
    using I = decltype(itag);
    const I* idx = ic.data<I>();
    check_indices(idx, ic.numel(), dsize, dim, "scatter_add", out);
    dispatch_add(out.dtype(), "scatter_add", [&](auto vtag) {
      using T = decltype(vtag);
      T* o = out.data<T>();
      const T* s = sc.data<T>();
#pragma omp parallel for if (outer * n * inner > kParallelWork)
      for (int64_t it = 0; it < items; ++it) {
        int64_t r = it / nblocks, t0 = (it % nblocks) * block, t1 = std::min(inner, t0 + block);
        T* orow = o + ooff[size_t(r)];
        for (int64_t j = 0; j < n; ++j) {
          const I* irow = idx + (r * n + j) * inner;
          const T* srow = s + (r * n + j) * inner;
          for (int64_t t = t0; t < t1; ++t) orow[int64_t(irow[t]) * dstride + toff[size_t(t)]] += srow[t];
        }
      }
    });
  });
}

// out[o, i, :] += src[o, j, :] for i = index[j]; out contiguous [outer, N, inner].
void index_add_into(Tensor& out, int64_t dim, const Tensor& index, const Tensor& src) {
  Tensor ic = index.contiguous(), sc = src.contiguous();
  int64_t nd = out.dim();
  int64_t outer = prod(out.shape(), 0, dim), dsize = out.shape()[dim], inner = prod(out.shape(), dim + 1, nd);
  int64_t n = ic.numel();
  if (outer * n * inner == 0) return;
  int64_t block = outer >= 16 ? inner : std::min(inner, kColumnBlock);
  int64_t nblocks = (inner + block - 1) / block, items = outer * nblocks;
  dispatch_index(ic.dtype(), "index_add", [&](auto itag) {
    using I = decltype(itag);
    const I* idx = ic.data<I>();
    check_indices(idx, n, dsize, dim, "index_add", out);
    dispatch_add(out.dtype(), "index_add", [&](auto vtag) {
      using T = decltype(vtag);
      T* o = out.data<T>();
      const T* s = sc.data<T>();
#pragma omp parallel for if (outer * n * inner > kParallelWork)
      for (int64_t it = 0; it < items; ++it) {
        int64_t r = it / nblocks, t0 = (it % nblocks) * block, t1 = std::min(inner, t0 + block);
        for (int64_t j = 0; j < n; ++j) {
          T* orow = o + (r * dsize + int64_t(idx[j])) * inner;
          const T* srow = s + (r * n + j) * inner;
#pragma omp simd
          for (int64_t t = t0; t < t1; ++t) orow[t] += srow[t];
        }
      }
    });
  });
}

}  // namespace

Tensor gather(const Tensor& x, int64_t dim_in, const Tensor& index) {
  MOE_CHECK(x.dim() >= 1, "gather", "x must have at least one dim, got ", x.shape_str());
  int64_t dim = wrap_dim(dim_in, x.dim(), "gather");
  check_same_rank_index(x, index, dim, "gather", "x");
  Tensor ic = index.contiguous();
  const Shape& is = ic.shape();
  int64_t nd = x.dim();
  Tensor out = Tensor::empty(is, x.dtype());
  int64_t outer = prod(is, 0, dim), n = is[dim], inner = prod(is, dim + 1, nd);
  if (out.numel() > 0) {
    // x is read through its own strides: no copy for transposed or sliced views.
    std::vector<int64_t> ooff = coordinate_offsets(is, x.strides(), 0, dim);
    std::vector<int64_t> toff = coordinate_offsets(is, x.strides(), dim + 1, nd);
    int64_t dstride = x.strides()[dim], dsize = x.shape()[dim];
    dispatch_index(ic.dtype(), "gather", [&](auto itag) {
      using I = decltype(itag);
      const I* idx = ic.data<I>();
      check_indices(idx, ic.numel(), dsize, dim, "gather", x);
      dispatch_copy(x.dtype(), [&](auto vtag) {
        using T = decltype(vtag);
        const T* src = static_cast<const T*>(x.raw_data());
        T* o = static_cast<T*>(out.raw_data());
#pragma omp parallel for if (out.numel() > kParallelWork)
        for (int64_t rj = 0; rj < outer * n; ++rj) {
          const T* xrow = src + ooff[size_t(rj / n)];
          const I* irow = idx + rj * inner;
          T* orow = o + rj * inner;
          for (int64_t t = 0; t < inner; ++t) orow[t] = xrow[int64_t(irow[t]) * dstride + toff[size_t(t)]];
        }
      });
    });
  }
  if (is_floating(x.dtype()) && needs_grad({x})) {
    Tensor xs = x;
    record("gather", {out}, [xs, dim, ic](const std::vector<Tensor>& g) {
      Tensor gx = Tensor::zeros(xs.shape(), g[0].dtype());
      scatter_add_into(gx, dim, ic, g[0]);
      accumulate_grad(xs, gx);
    });
  }
  return out;
}

Tensor scatter_add(const Tensor& base, int64_t dim_in, const Tensor& index, const Tensor& src) {
  MOE_CHECK(base.dim() >= 1, "scatter_add", "base must have at least one dim, got ", base.shape_str());
  int64_t dim = wrap_dim(dim_in, base.dim(), "scatter_add");
  MOE_CHECK(base.dtype() == src.dtype(), "scatter_add", "dtype mismatch: base ", dtype_name(base.dtype()), " ",
            base.shape_str(), " vs src ", dtype_name(src.dtype()), " ", src.shape_str());
  MOE_CHECK(index.shape() == src.shape(), "scatter_add", "index ", index.shape_str(), " and src ", src.shape_str(),
            " must have the same shape");
  check_same_rank_index(base, index, dim, "scatter_add", "base");
  Tensor out = base.clone();
  scatter_add_into(out, dim, index, src);
  if (needs_grad({base, src})) {
    Tensor b = base, s = src, ic = index.contiguous();
    record("scatter_add", {out}, [b, s, ic, dim](const std::vector<Tensor>& g) {
      accumulate_grad(b, g[0]);
      if (s.requires_grad()) accumulate_grad(s, gather(g[0], dim, ic));
    });
  }
  return out;
}

Tensor index_select(const Tensor& x, int64_t dim_in, const Tensor& index) {
  MOE_CHECK(x.dim() >= 1, "index_select", "x must have at least one dim, got ", x.shape_str());
  int64_t dim = wrap_dim(dim_in, x.dim(), "index_select");
  MOE_CHECK(index.dim() == 1, "index_select", "index must be 1-d, got ", index.shape_str());
  Tensor xc = x.contiguous().detach(), ic = index.contiguous();
  int64_t nd = x.dim(), n = ic.numel();
  int64_t outer = prod(x.shape(), 0, dim), dsize = x.shape()[dim], inner = prod(x.shape(), dim + 1, nd);
  Shape os = x.shape();
  os[dim] = n;
  Tensor out = Tensor::empty(os, x.dtype());
  if (out.numel() > 0) {
    dispatch_index(ic.dtype(), "index_select", [&](auto itag) {
      using I = decltype(itag);
      const I* idx = ic.data<I>();
      check_indices(idx, n, dsize, dim, "index_select", x);
      size_t row_bytes = size_t(inner) * dtype_size(x.dtype());
      const char* src = static_cast<const char*>(xc.raw_data());
      char* o = static_cast<char*>(out.raw_data());
#pragma omp parallel for if (out.numel() > kParallelWork)
      for (int64_t rj = 0; rj < outer * n; ++rj) {
        int64_t r = rj / n, j = rj % n;
        std::memcpy(o + size_t(rj) * row_bytes, src + size_t(r * dsize + int64_t(idx[j])) * row_bytes, row_bytes);
      }
    });
  }
  if (is_floating(x.dtype()) && needs_grad({x})) {
    Tensor xs = x;
    record("index_select", {out}, [xs, dim, ic](const std::vector<Tensor>& g) {
      Tensor gx = Tensor::zeros(xs.shape(), g[0].dtype());
      index_add_into(gx, dim, ic, g[0]);
      accumulate_grad(xs, gx);
    });
  }
  return out;
}

Tensor index_add(const Tensor& base, int64_t dim_in, const Tensor& index, const Tensor& src) {
  MOE_CHECK(base.dim() >= 1, "index_add", "base must have at least one dim, got ", base.shape_str());
  int64_t dim = wrap_dim(dim_in, base.dim(), "index_add");
  MOE_CHECK(index.dim() == 1, "index_add", "index must be 1-d, got ", index.shape_str());
  MOE_CHECK(base.dtype() == src.dtype(), "index_add", "dtype mismatch: base ", dtype_name(base.dtype()), " ",
            base.shape_str(), " vs src ", dtype_name(src.dtype()), " ", src.shape_str());
  Shape expect = base.shape();
  expect[dim] = index.numel();
  MOE_CHECK(src.shape() == expect, "index_add", "src ", src.shape_str(), " must be ", shape_str(expect), " (base ",
            base.shape_str(), " with dim ", dim, " replaced by the ", index.numel(), " indices)");
  Tensor out = base.clone();
  index_add_into(out, dim, index, src);
  if (needs_grad({base, src})) {
    Tensor b = base, s = src, ic = index.contiguous();
    record("index_add", {out}, [b, s, ic, dim](const std::vector<Tensor>& g) {
      accumulate_grad(b, g[0]);
      if (s.requires_grad()) accumulate_grad(s, index_select(g[0], dim, ic));
    });
  }
  return out;
}

}  // namespace moe
