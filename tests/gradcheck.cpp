// Finite-difference gradient checker for the op tests (see gradcheck.h).
#include "tests/gradcheck.h"

#include <cmath>
#include <sstream>

#include "core/rng.h"

namespace moe::test {

Tensor randn_f64(const Shape& shape, uint64_t seed, double scale, bool requires_grad) {
  Philox rng(seed, stream_id(RngStream::test));
  Tensor t = Tensor::empty(shape, DType::f64);
  double* p = t.data<double>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = rng.normal() * scale;
  t.set_requires_grad(requires_grad);
  return t;
}

Tensor randn_f32(const Shape& shape, uint64_t seed, double scale, bool requires_grad) {
  Tensor t = randn_f64(shape, seed, scale, false).to(DType::f32);
  t.set_requires_grad(requires_grad);
  return t;
}

GradcheckResult gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& f, std::vector<Tensor> inputs,
                          double eps, double atol, double rtol) {
  GradcheckResult res;
  for (auto& x : inputs) {
    MOE_CHECK(x.dtype() != DType::f64 || x.is_contiguous(), "gradcheck", "inputs must be contiguous");
    MOE_CHECK(!x.requires_grad() || x.dtype() == DType::f64, "gradcheck", "inputs that require grad must be f64");
  }
  // Projection weights make every output element matter with a different weight.
  Tensor probe;
  {
    NoGradGuard ng;
    Tensor y = f(inputs);
    probe = randn_f64(y.shape(), 12345, 1.0, false);
  }
  auto loss_of = [&](const std::vector<Tensor>& in) {
    NoGradGuard ng;
    Tensor y = f(in);
    const double *py = y.contiguous().data<double>(), *pp = probe.data<double>();
    double s = 0;
    for (int64_t i = 0; i < y.numel(); ++i) s += py[i] * pp[i];
    return s;
  };
  for (auto& x : inputs)
    if (x.requires_grad()) x.zero_grad();
  clear_tape();
  Tensor y = f(inputs);
  sum_all(mul(y, probe)).backward();

  for (size_t k = 0; k < inputs.size(); ++k) {
    Tensor x = inputs[k];
    if (!x.requires_grad()) continue;
    Tensor g = x.grad();
    std::vector<double> analytic = g.defined() ? g.to_double_vector() : std::vector<double>(size_t(x.numel()), 0.0);
    double* px = x.data<double>();
    for (int64_t i = 0; i < x.numel(); ++i) {
      double orig = px[i];
      px[i] = orig + eps;
      double lp = loss_of(inputs);
      px[i] = orig - eps;
      double lm = loss_of(inputs);
      px[i] = orig;
      double numeric = (lp - lm) / (2 * eps);
      double err = std::abs(analytic[size_t(i)] - numeric);
      res.max_abs_err = std::max(res.max_abs_err, err);
      res.max_rel_err = std::max(res.max_rel_err, err / std::max(std::abs(numeric), 1e-12));
      if (err > atol + rtol * std::abs(numeric) && res.ok) {
        res.ok = false;
        std::ostringstream os;
        os << "input " << k << " " << x.shape_str() << " element " << i << ": analytic " << analytic[size_t(i)]
           << " vs numeric " << numeric;
        res.detail = os.str();
      }
    }
  }
  return res;
}

}  // namespace moe::test
