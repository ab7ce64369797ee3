// Backend::gather: the element gather behind a ragged device routing's gates (build_routing with a
// device gate source picks each assignment's gate out of a padded [T, K] gate vector).
#include "core/autograd.h"
#include "core/cuda/moe_gather.h"
#include "core/cuda/ops/cuda_backend.h"
#include "core/cuda/ops/op_util.h"

namespace moe::cuda {

Tensor Backend::gather(const Tensor& x, const Tensor& index) {
  const char* op = "gather";
  MOE_CHECK(x.defined() && x.device() == Device::cuda && x.dtype() == DType::f32, op,
            "x must be an fp32 tensor on the cuda device");
  MOE_CHECK(index.defined() && index.device() == Device::cuda && index.dtype() == DType::i32 && index.dim() == 1, op,
            "index must be a 1-D i32 tensor on the cuda device, got ", index.defined() ? index.shape_str() : "none");
  const int64_t N = x.numel(), A = index.numel();
  Tensor xc = x.detach().contiguous(), ic = index.contiguous();
  Tensor out = Tensor::empty({A}, DType::f32, Device::cuda);
  gather_elements(cf(xc), ci(ic), long(A), mf(out));
  if (needs_grad({x}))
    record(op, {out}, [x, ic, N, A](const std::vector<Tensor>& g) {
      Tensor gg = grad_f32(g[0]);
      Tensor gx = Tensor::zeros({N}, DType::f32, Device::cuda);
      scatter_elements(cf(gg), ci(ic), long(A), mf(gx));
      accumulate_grad(x, gx.reshape(x.shape()));
    });
  return out;
}

}  // namespace moe::cuda
