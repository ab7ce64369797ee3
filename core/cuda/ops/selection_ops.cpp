// Selections of the strategies that do not route by a fixed top-k (expert_choice, top_p) and
// top-p's entropy loss, over the kernels of core/cuda/selection.h; fp32 scores [T, E] on the device.
#include "core/autograd.h"
#include "core/cuda/caching_allocator.h"
#include "core/cuda/memory.h"
#include "core/cuda/ops/cuda_backend.h"
#include "core/cuda/ops/op_util.h"
#include "core/cuda/selection.h"

namespace moe::cuda {
namespace {

// scores on the device, fp32, [T, E] with T, E >= 1; names the op otherwise.
void check_scores(const Tensor& s, const char* op) {
  check_f32_2d(s, op, "scores");
  MOE_CHECK(s.size(0) >= 1 && s.size(1) >= 1, op, "expected scores [T, E] with T, E >= 1, got ", s.shape_str());
}

}  // namespace

std::vector<uint8_t> Backend::expert_choice_select(const Tensor& scores, int64_t capacity) {
  const char* op = "expert_choice_select";
  check_scores(scores, op);
  const long T_ = long(scores.size(0));
  const int E = int(scores.size(1));
  MOE_CHECK(capacity >= 1 && capacity <= T_, op, "capacity ", capacity, " must be in [1, T = ", T_, "]");
  Tensor sc = scores.detach().contiguous();
  const size_t n = size_t(T_) * size_t(E);
  Workspace<uint8_t> chosen{n};
  cuda::expert_choice_select(cf(sc), T_, E, long(capacity), chosen.get());
  std::vector<uint8_t> out(n);
  copy_to_host(out.data(), chosen.get(), n);
  return out;
}

std::pair<Tensor, Tensor> Backend::top_p_select(const Tensor& scores, double p) {
  const char* op = "top_p_select";
  check_scores(scores, op);
  const long T_ = long(scores.size(0));
  const int E = int(scores.size(1));
  Tensor sc = scores.detach().contiguous();
  Tensor ranked = Tensor::empty({T_, E}, DType::i32, Device::cuda);
  Tensor counts = Tensor::empty({T_}, DType::i32, Device::cuda);
  cuda::top_p_select(cf(sc), T_, E, p, ranked.device_data<int32_t>(), counts.device_data<int32_t>());
  return {ranked, counts};
}

Tensor Backend::routing_entropy(const Tensor& scores) {
  const char* op = "routing_entropy";
  check_scores(scores, op);
  const long T_ = long(scores.size(0));
  const int E = int(scores.size(1));
  Tensor sc = scores.detach().contiguous();
  Tensor out = Tensor::empty({}, DType::f32, Device::cuda);
  routing_entropy_forward(cf(sc), T_, E, mf(out));
  if (needs_grad({scores}))
    record(op, {out}, [scores, sc, T_, E](const std::vector<Tensor>& g) {
      const float go = float(g[0].item_double());  // one scalar to the host
      Tensor gs = Tensor::empty({T_, E}, DType::f32, Device::cuda);
      routing_entropy_backward(cf(sc), go, T_, E, mf(gs));
      accumulate_grad(scores, gs);
    });
  return out;
}

}  // namespace moe::cuda
