// Backend::select_rows: the row packing of expert parallelism's exchange on the device (which
// rows go to which rank, and the received rows regrouped by compute slot) over the permute's
// row-gather kernel.
#include "core/cuda/moe_gather.h"
#include "core/cuda/ops/cuda_backend.h"
#include "core/cuda/ops/op_util.h"

namespace moe::cuda {

Tensor Backend::select_rows(const Tensor& x, const Tensor& index) {
  const char* op = "select_rows";
  MOE_CHECK(x.defined() && x.device() == Device::cuda && x.dim() == 2, op,
            "x must be a [rows, D] tensor on the cuda device, got ", x.defined() ? x.shape_str() : "none");
  MOE_CHECK(index.defined() && index.device() == Device::cuda && index.dtype() == DType::i32 && index.dim() == 1, op,
            "index must be a 1-D i32 tensor on the cuda device, got ", index.defined() ? index.shape_str() : "none");
  const int64_t m = index.numel(), D = x.size(1);
  Tensor out = Tensor::empty({m, D}, x.dtype(), Device::cuda);
  if (m == 0 || D == 0) return out;
  Tensor xc = x.detach().contiguous(), ic = index.contiguous();
  if (x.dtype() == DType::f32)
    cuda::gather_rows<float>(cf(xc), ci(ic), long(m), long(D), mf(out));
  else if (x.dtype() == DType::bf16)
    cuda::gather_rows<bf16>(xc.device_data<bf16>(), ci(ic), long(m), long(D), out.device_data<bf16>());
  else
    MOE_FAIL(op, "rows on the cuda device must be f32 or bf16, got ", dtype_name(x.dtype()));
  return out;
}

}  // namespace moe::cuda
