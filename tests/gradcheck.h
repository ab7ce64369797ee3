// Gradient check against central finite differences, in double precision.
// f maps f64 inputs to an f64 output; the check backpropagates a random projection of the
// output and compares every input's grad with (L(x + h) - L(x - h)) / 2h.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "core/ops.h"

namespace moe::test {

struct GradcheckResult {
  bool ok = true;
  double max_abs_err = 0, max_rel_err = 0;
  std::string detail;  // first failing element, for the assertion message
};

// Inputs must be f64; those with requires_grad are checked. Passes when for every element
// |analytic - numeric| <= atol + rtol * |numeric|.
GradcheckResult gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& f, std::vector<Tensor> inputs,
                          double eps = 1e-6, double atol = 1e-7, double rtol = 1e-5);

// Random f64 tensor with entries ~ N(0, scale^2) from the test RNG stream (seeded).
Tensor randn_f64(const Shape& shape, uint64_t seed, double scale = 1.0, bool requires_grad = true);
Tensor randn_f32(const Shape& shape, uint64_t seed, double scale = 1.0, bool requires_grad = false);

}  // namespace moe::test

#define EXPECT_GRADCHECK(...)                                                                    \
  do {                                                                                           \
    auto _r = ::moe::test::gradcheck(__VA_ARGS__);                                               \
    EXPECT_TRUE(_r.ok) << _r.detail << " (max abs err " << _r.max_abs_err << ", max rel err "    \
                       << _r.max_rel_err << ")";                                                 \
  } while (0)
