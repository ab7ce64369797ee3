// Backend ops of the device branches of "ssr" and "null_experts" (layers/moe/balance/ssr.cpp,
// null_experts.cpp): the row-shifted scaling behind SSR's plan gates.
#include "core/autograd.h"
#include "core/cpu/elementwise.h"
#include "core/cuda/ops/cuda_backend.h"
#include "core/cuda/ops/op_util.h"
#include "core/cuda/row_shift.h"

namespace moe::cuda {

Tensor Backend::scale_add_row(const Tensor& x, double scale, const Tensor& row) {
  const char* op = "scale_add_row";
  check_f32_2d(x, op, "x");
  MOE_CHECK(row.defined() && row.device() == Device::cuda && row.dtype() == DType::f64 && row.dim() == 1 &&
                row.size(0) == x.size(1),
            op, "row must be [", x.size(1), "] f64 on the cuda device, got ",
            row.defined() ? dtype_name(row.dtype()) + std::string(" ") + row.shape_str() : std::string("(undefined)"));
  const long T_ = long(x.size(0));
  const int E = int(x.size(1));
  Tensor xc = x.detach().contiguous(), rc = row.contiguous();
  Tensor out = Tensor::empty({T_, E}, DType::f32, Device::cuda);
  cuda::scale_add_row(cf(xc), scale, rc.device_data<double>(), mf(out), T_, E);
  if (needs_grad({x}))
    record(op, {out}, [x, scale](const std::vector<Tensor>& g) { accumulate_grad(x, moe::mul_scalar(g[0], scale)); });
  return out;
}

}  // namespace moe::cuda
