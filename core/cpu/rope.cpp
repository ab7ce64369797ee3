// Rotary position embedding, rotate-half convention: element i pairs with i + Dh/2. The cos/sin
// table is built in double (angles reach 1e4 rad at long positions), then cast to the compute type.
#include "core/cpu/rope.h"

#include <cmath>
#include <vector>

#include "core/autograd.h"
#include "core/device.h"
#include "core/dispatch.h"

namespace moe {
namespace {

// The cos/sin tables of one (S, Dh, theta, pos_offset), kept per thread and dtype: every
// attention layer's q and k, forward and backward, use the same ones within a step.
template <class T>
struct RopeTables {
  int64_t S = -1, Dh = -1, pos_offset = -1;
  double theta = 0;
  std::vector<T> cos_t, sin_t, neg_sin_t;  // [S, Dh / 2]
};

template <class T>
const RopeTables<T>& rope_tables(int64_t S, int64_t Dh, double theta, int64_t pos_offset) {
  thread_local RopeTables<T> t;
  if (t.S == S && t.Dh == Dh && t.theta == theta && t.pos_offset == pos_offset) return t;
  const int64_t half = Dh / 2;
  t.cos_t.assign(size_t(S * half), T(0));
  t.sin_t.assign(size_t(S * half), T(0));
  t.neg_sin_t.assign(size_t(S * half), T(0));
  for (int64_t i = 0; i < half; ++i) {
    double inv_freq = std::pow(theta, -2.0 * double(i) / double(Dh));
    for (int64_t s = 0; s < S; ++s) {
      double angle = double(pos_offset + s) * inv_freq;
      t.cos_t[size_t(s * half + i)] = T(std::cos(angle));
      t.sin_t[size_t(s * half + i)] = T(std::sin(angle));
      t.neg_sin_t[size_t(s * half + i)] = T(-std::sin(angle));
    }
  }
  t.S = S;
  t.Dh = Dh;
  t.theta = theta;
  t.pos_offset = pos_offset;
  return t;
}

// Rotates every [Dh] vector of x [B, S, H, Dh] by its position's angles; sign = -1 rotates back
// (the backward: the transpose of a rotation is its inverse).
template <class T>
Tensor rotate(const Tensor& x, double theta, int64_t pos_offset, double sign) {
  Tensor xc = x.contiguous().detach();
  int64_t B = x.shape()[0], S = x.shape()[1], H = x.shape()[2], Dh = x.shape()[3], half = Dh / 2;
  const RopeTables<T>& tables = rope_tables<T>(S, Dh, theta, pos_offset);
  const std::vector<T>& cos_t = tables.cos_t;
  const std::vector<T>& sin_t = sign > 0 ? tables.sin_t : tables.neg_sin_t;
  Tensor out = Tensor::empty(x.shape(), x.dtype());
  const T* xp = xc.data<T>();
  T* op = out.data<T>();
#pragma omp parallel for if (x.numel() > 32768)
  for (int64_t bs = 0; bs < B * S; ++bs) {
    const T* c = cos_t.data() + (bs % S) * half;
    const T* sn = sin_t.data() + (bs % S) * half;
    for (int64_t h = 0; h < H; ++h) {
      const T* in = xp + (bs * H + h) * Dh;
      T* o = op + (bs * H + h) * Dh;
#pragma omp simd
      for (int64_t i = 0; i < half; ++i) {
        T a = in[i], b = in[i + half];
        o[i] = a * c[i] - b * sn[i];
        o[i + half] = b * c[i] + a * sn[i];
      }
    }
  }
  return out;
}

}  // namespace

Tensor rope(const Tensor& x, double theta, int64_t pos_offset) {
  if (x.device() == Device::cuda) return cuda_backend("rope").rope(x, theta, pos_offset);
  MOE_CHECK(x.dim() == 4, "rope", "x must be [B, S, H, Dh], got ", x.shape_str());
  MOE_CHECK(x.shape()[3] % 2 == 0, "rope", "head dim Dh must be even, got ", x.shape()[3], " in x ", x.shape_str());
  MOE_CHECK(theta > 0, "rope", "theta must be positive, got ", theta);
  MOE_CHECK(pos_offset >= 0, "rope", "pos_offset must be >= 0, got ", pos_offset);
  Tensor out =
      dispatch_float(x.dtype(), "rope", [&](auto tag) { return rotate<decltype(tag)>(x, theta, pos_offset, 1.0); });
  if (needs_grad({x})) {
    Tensor xs = x;
    record("rope", {out}, [xs, theta, pos_offset](const std::vector<Tensor>& g) {
      accumulate_grad(xs, dispatch_float(g[0].dtype(), "rope backward", [&](auto tag) {
                        return rotate<decltype(tag)>(g[0], theta, pos_offset, -1.0);
                      }));
    });
  }
  return out;
}

}  // namespace moe
