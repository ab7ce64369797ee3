// The MoE layer's data path on the device: permute by the host-made dispatch plan, the SwiGLU
// experts (per-expert dense GEMMs, or the tensor-core grouped GEMM), the gate-weighted CSR
// combine; forward and backward.
#include <algorithm>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>

#include "core/autograd.h"
#include "core/cuda/elementwise.h"
#include "core/cuda/grouped_gemm.h"
#include "core/cuda/grouped_gemm_sm90.h"
#include "core/cuda/moe_gather.h"
#include "core/cuda/ops/cuda_backend.h"
#include "core/cuda/ops/dense_gemm.h"
#include "core/cuda/ops/experts_per_expert.h"
#include "layers/moe/dispatch.h"

namespace moe::cuda {
namespace {

void check_on_device(const Tensor& t, const char* op, const char* what) {
  MOE_CHECK(t.defined() && t.device() == Device::cuda, op, what, " ", t.defined() ? t.shape_str() : "(undefined)",
            " is not on the cuda device");
}

// f(float{}) or f(bf16{}) for the activation dtype; anything else is refused naming the op.
template <class F>
void float_or_bf16(DType dt, const char* op, F&& f) {
  if (dt == DType::f32)
    f(float{});
  else if (dt == DType::bf16)
    f(bf16{});
  else
    MOE_FAIL(op, "activations on the cuda device must be f32 or bf16, got ", dtype_name(dt));
}

// An int32 copy of host indices on the device (at least one element, so the pointer is real).
Tensor upload_i32(const std::vector<int64_t>& v, const char* op) {
  std::vector<int32_t> w(std::max<size_t>(v.size(), 1), 0);
  for (size_t i = 0; i < v.size(); ++i) {
    MOE_CHECK(v[i] >= INT32_MIN && v[i] <= INT32_MAX, op, "index ", v[i], " does not fit int32");
    w[i] = int32_t(v[i]);
  }
  return Tensor::from_vector(w, {int64_t(w.size())}).to(Device::cuda);
}

// The plan's index vectors on the device. Permute and combine of one forward (and their
// backwards) use the same plan: the last plan's upload is reused while something (a backward
// closure, in training) still holds it. Both are held weakly here, so no device memory outlives
// its users in a static; plans are matched by owner, so a new plan at a recycled address is
// never mistaken for the last one.
struct PlanArrays {
  Tensor token, order, token_offsets, token_slots;  // i32, as DispatchPlan
};

std::shared_ptr<const PlanArrays> plan_arrays(const DispatchPlanPtr& plan, const char* op) {
  MOE_CHECK(plan != nullptr, op, "no dispatch plan");
  static std::mutex mu;
  static std::weak_ptr<const DispatchPlan> last_plan;
  static std::weak_ptr<const PlanArrays> last_arrays;
  std::lock_guard<std::mutex> lock(mu);
  if (!last_plan.owner_before(plan) && !plan.owner_before(last_plan))
    if (auto held = last_arrays.lock()) return held;
  // One host buffer and one copy up, the four arrays views of it: a copy from pageable memory
  // waits for the device and has a fixed cost of its own, paid once instead of four times. Each
  // view starts on a 16-byte boundary, as a separate allocation would.
  auto a = std::make_shared<PlanArrays>();
  const std::vector<int64_t>* parts[] = {&plan->token, &plan->order, &plan->token_offsets, &plan->token_slots};
  Tensor* views[] = {&a->token, &a->order, &a->token_offsets, &a->token_slots};
  auto padded = [](size_t n) { return int64_t((n + 3) / 4 * 4); };
  int64_t total = 0;
  for (const auto* v : parts) total += padded(v->size());
  Tensor host = Tensor::zeros({std::max<int64_t>(total, 1)}, DType::i32);
  int32_t* w = host.data<int32_t>();
  int64_t at = 0;
  for (const auto* v : parts) {
    for (size_t i = 0; i < v->size(); ++i) {
      const int64_t x = (*v)[i];
      MOE_CHECK(x >= INT32_MIN && x <= INT32_MAX, op, "index ", x, " does not fit int32");
      w[at + int64_t(i)] = int32_t(x);
    }
    at += padded(v->size());
  }
  Tensor dev = host.to(Device::cuda);
  at = 0;
  for (int i = 0; i < 4; ++i) {
    *views[i] = dev.slice(0, at, at + int64_t(parts[i]->size()));
    at += padded(parts[i]->size());
  }
  last_plan = plan;
  last_arrays = a;
  return a;
}

const int32_t* i32(const Tensor& t) { return t.device_data<int32_t>(); }

// g converted to dtype dt and made contiguous (a grad arriving in another dtype is accepted).
Tensor grad_as(const Tensor& g, DType dt) { return (g.dtype() == dt ? g : g.to(dt)).contiguous(); }

}  // namespace

// Which code multiplies the experts. Per expert: three dense GEMMs per expert forward and five
// backward through dense_gemm (cuBLAS on a GPU), the SwiGLU between them element-wise. Grouped:
// the hand-written tensor-core grouped GEMM (grouped_gemm.h), one launch per product for all
// experts. bench/cuda/experts_bench.cpp (BM_ExpertsForwardBackward) times both, forward +
// backward, over 64-4096 rows per expert; on an H100 (docs/benchmarks.md, 2026-11-26):
// - d_model 1024, hidden 2048, E 16 and 64: the wgmma2 kernel (sm_90's default) is faster up to
//   512 rows per expert (1.15-1.23x), per-expert cuBLAS from 1024 (0.86-0.90x); the mma kernel
//   (other GPUs) up to 256 (1.15-1.6x), per expert from 512 (0.72-0.75x). Switch: 1024 rows per
//   expert on average with a wgmma kernel, 384 with the mma kernel.
// - d_model 128, hidden 128: grouped at every size (2.3x at 4096 rows, up to 16x): per-expert
//   GEMMs that small are launch-bound. Only these two widths were measured; below 512 in
//   d_model or hidden the layer stays grouped.
// - The TMA kernels (wgmma4, sm_90's default, and wgmma5) reach 0.71-0.93 of one dense cuBLAS GEMM
//   of the same FLOPs where the per-expert GEMMs pay a launch and a pipeline fill each: grouped at
//   every size.
// MOE_EXPERT_GEMM = grouped | per_expert overrides the choice.
bool use_grouped_kernel(int64_t rows, int64_t experts, int64_t d_model, int64_t hidden) {
  const char* v = std::getenv("MOE_EXPERT_GEMM");
  if (v != nullptr && std::string(v) == "grouped") return true;
  if (v != nullptr && std::string(v) == "per_expert") return false;
  if (d_model < 512 || hidden < 512) return true;
  const GroupedGemmKernel kernel = grouped_gemm_kernel();
  if (kernel == GroupedGemmKernel::wgmma4 || kernel == GroupedGemmKernel::wgmma5) return true;
  const int64_t switch_rows = kernel == GroupedGemmKernel::mma ? 384 : 1024;
  return rows < switch_rows * std::max<int64_t>(experts, 1);
}

void experts_forward_per_expert(const bf16* x, const bf16* w1, const bf16* w3, const bf16* w2,
                                const std::vector<int64_t>& off, long D, long H, bf16* h1, bf16* h3, bf16* h, bf16* y) {
  const size_t E = off.size() - 1;
  const long N = long(off.back());
  for (size_t e = 0; e < E; ++e) {
    const long o = long(off[e]), r = long(off[e + 1]) - o;
    dense_gemm<bf16, bf16>(false, true, r, H, D, 1.0f, x + o * D, D, w1 + long(e) * H * D, D, 0.0f, h1 + o * H, H);
    dense_gemm<bf16, bf16>(false, true, r, H, D, 1.0f, x + o * D, D, w3 + long(e) * H * D, D, 0.0f, h3 + o * H, H);
  }
  swiglu_forward<bf16>(h1, h3, h, size_t(N) * size_t(H));
  for (size_t e = 0; e < E; ++e) {
    const long o = long(off[e]), r = long(off[e + 1]) - o;
    dense_gemm<bf16, bf16>(false, true, r, D, H, 1.0f, h + o * H, H, w2 + long(e) * D * H, H, 0.0f, y + o * D, D);
  }
}

void experts_backward_per_expert(const bf16* x, const bf16* w1, const bf16* w3, const bf16* w2,
                                 const std::vector<int64_t>& off, long D, long H, const bf16* h1, const bf16* h3,
                                 const bf16* h, const bf16* dy, float* dx, float* d1, float* d3, float* d2, bf16* pdh,
                                 bf16* pdh1, bf16* pdh3) {
  const size_t E = off.size() - 1;
  const long N = long(off.back());
  for (size_t e = 0; e < E; ++e) {
    const long o = long(off[e]), r = long(off[e + 1]) - o;
    dense_gemm<bf16, bf16>(false, false, r, H, D, 1.0f, dy + o * D, D, w2 + long(e) * D * H, H, 0.0f, pdh + o * H, H);
    dense_gemm<bf16, float>(true, false, D, H, r, 1.0f, dy + o * D, D, h + o * H, H, 0.0f, d2 + long(e) * D * H, H);
  }
  swiglu_backward<bf16>(h1, h3, pdh, pdh1, pdh3, size_t(N) * size_t(H));
  for (size_t e = 0; e < E; ++e) {
    const long o = long(off[e]), r = long(off[e + 1]) - o;
    dense_gemm<bf16, float>(false, false, r, D, H, 1.0f, pdh1 + o * H, H, w1 + long(e) * H * D, D, 0.0f, dx + o * D, D);
    dense_gemm<bf16, float>(false, false, r, D, H, 1.0f, pdh3 + o * H, H, w3 + long(e) * H * D, D, 1.0f, dx + o * D, D);
    dense_gemm<bf16, float>(true, false, H, D, r, 1.0f, pdh1 + o * H, H, x + o * D, D, 0.0f, d1 + long(e) * H * D, D);
    dense_gemm<bf16, float>(true, false, H, D, r, 1.0f, pdh3 + o * H, H, x + o * D, D, 0.0f, d3 + long(e) * H * D, D);
  }
}

Tensor Backend::permute_tokens(const Tensor& x, const DispatchPlanPtr& plan) {
  const char* op = "permute_tokens";
  check_on_device(x, op, "x");
  auto pa = plan_arrays(plan, op);
  MOE_CHECK(x.dim() == 2 && x.size(0) == plan->num_tokens, op, "expected x [", plan->num_tokens, ", D], got ",
            x.shape_str());
  const int64_t T_ = plan->num_tokens, D = x.size(1), K = plan->kept();
  Tensor xc = x.detach().contiguous();
  Tensor out = Tensor::empty({K, D}, x.dtype(), Device::cuda);
  float_or_bf16(x.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    gather_rows<T>(xc.device_data<T>(), i32(pa->token), K, D, out.device_data<T>());
  });
  if (needs_grad({x}))
    record(op, {out}, [x, pa, T_, D](const std::vector<Tensor>& g) {
      Tensor gc = grad_as(g[0], x.dtype());
      Tensor gx = Tensor::empty({T_, D}, x.dtype(), Device::cuda);
      float_or_bf16(x.dtype(), "permute_tokens backward", [&](auto tag) {
        using T = decltype(tag);
        csr_combine<T>(gc.device_data<T>(), i32(pa->token_offsets), i32(pa->token_slots), nullptr, nullptr, T_, D,
                       gx.device_data<T>());
      });
      accumulate_grad(x, gx);
    });
  return out;
}

Tensor Backend::unpermute_combine(const Tensor& y, const Tensor& gate, const DispatchPlanPtr& plan) {
  const char* op = "unpermute_combine";
  check_on_device(y, op, "y");
  check_on_device(gate, op, "gate");
  auto pa = plan_arrays(plan, op);
  const int64_t K = plan->kept(), A = plan->num_assignments, T_ = plan->num_tokens;
  MOE_CHECK(y.dim() == 2 && y.size(0) == K, op, "expected y [", K, ", D] (kept assignments), got ", y.shape_str());
  MOE_CHECK(gate.dim() == 1 && gate.numel() == A, op, "expected gate [", A, "], got ", gate.shape_str());
  MOE_CHECK(is_floating(gate.dtype()), op, "gate must be floating, got ", dtype_name(gate.dtype()));
  const int64_t D = y.size(1);
  // Gates are fp32 on the device whatever the activation dtype (router math is fp32); the
  // conversion is differentiable, so a gate of another dtype gets its grad back in its dtype.
  Tensor g32 = gate.dtype() == DType::f32 ? gate : gate.to(DType::f32);
  Tensor yc = y.detach().contiguous(), gc = g32.detach().contiguous();
  Tensor out = Tensor::empty({T_, D}, y.dtype(), Device::cuda);
  float_or_bf16(y.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    csr_combine<T>(yc.device_data<T>(), i32(pa->token_offsets), i32(pa->token_slots), i32(pa->order),
                   gc.device_data<float>(), T_, D, out.device_data<T>());
  });
  if (needs_grad({y, g32}))
    record(op, {out}, [y, g32, yc, gc, pa, K, A, D](const std::vector<Tensor>& g) {
      Tensor go = grad_as(g[0], y.dtype());
      const bool want_y = y.requires_grad(), want_g = g32.requires_grad();
      Tensor gy = want_y ? Tensor::empty({K, D}, y.dtype(), Device::cuda) : Tensor();
      Tensor gg = want_g ? Tensor::zeros({A}, DType::f32, Device::cuda) : Tensor();  // dropped: 0
      float_or_bf16(y.dtype(), "unpermute_combine backward", [&](auto tag) {
        using T = decltype(tag);
        csr_combine_backward<T>(go.device_data<T>(), yc.device_data<T>(), i32(pa->token), i32(pa->order),
                                gc.device_data<float>(), K, D, want_y ? gy.device_data<T>() : nullptr,
                                want_g ? gg.device_data<float>() : nullptr);
      });
      if (want_y) accumulate_grad(y, gy);
      if (want_g) accumulate_grad(g32, gg);
    });
  return out;
}

// The experts multiply in bf16 on tensor cores whatever the activation dtype: x and the fp32
// master weights are converted to bf16 per call, products accumulate in fp32, the SwiGLU
// intermediates are kept in bf16 for the backward, weight grads come back in fp32.
Tensor Backend::expert_swiglu_ffn(const Tensor& x, const Tensor& w1, const Tensor& w3, const Tensor& w2,
                                  const std::vector<int64_t>& offsets) {
  const char* op = "expert_swiglu_ffn";
  check_on_device(x, op, "x");
  check_on_device(w1, op, "w1");
  check_on_device(w3, op, "w3");
  check_on_device(w2, op, "w2");
  // Shapes and offsets: checked by the caller, layers/moe/experts.cpp's expert_swiglu_ffn.
  const int64_t N = x.size(0), D = x.size(1), E = w1.size(0), H = w1.size(1);
  MOE_CHECK(x.dtype() == DType::f32 || x.dtype() == DType::bf16, op, "x must be f32 or bf16 on the cuda device, got ",
            dtype_name(x.dtype()));
  for (const Tensor* w : {&w1, &w3, &w2})
    MOE_CHECK(w->dtype() == DType::f32 || w->dtype() == DType::bf16, op,
              "expert weights must be f32 (masters) or bf16 on the cuda device, got ", dtype_name(w->dtype()));
  auto bf = [](const Tensor& t) { return t.detach().contiguous().to(DType::bf16).contiguous(); };
  Tensor xb = bf(x), b1 = bf(w1), b3 = bf(w3), b2 = bf(w2);
  Tensor off = upload_i32(offsets, op);
  const auto dv = [](const Tensor& t) { return t.device_data<bf16>(); };
  Tensor h1 = Tensor::empty({N, H}, DType::bf16, Device::cuda), h3 = Tensor::empty({N, H}, DType::bf16, Device::cuda),
         h = Tensor::empty({N, H}, DType::bf16, Device::cuda), y = Tensor::empty({N, D}, DType::bf16, Device::cuda);
  const bool grouped = use_grouped_kernel(N, E, D, H);
  if (N > 0 && grouped)
    experts_forward(dv(xb), dv(b1), dv(b3), dv(b2), i32(off), int(E), N, D, H, dv(h1), dv(h3), dv(h), dv(y));
  else if (N > 0)
    experts_forward_per_expert(dv(xb), dv(b1), dv(b3), dv(b2), offsets, D, H, dv(h1), dv(h3), dv(h), dv(y));
  Tensor out = x.dtype() == DType::bf16 ? y : y.to(x.dtype());
  if (needs_grad({x, w1, w3, w2}))
    record(op, {out}, [x, w1, w3, w2, xb, b1, b3, b2, off, offsets, grouped, h1, h3, h, N, D, E, H,
                       dv](const std::vector<Tensor>& g) {
      Tensor dy = grad_as(g[0], DType::bf16);
      Tensor dx;
      // experts_backward overwrites the weight grads (zeros for an expert without rows); the
      // per-expert path skips an expert without rows, so its grads start at zero.
      auto wgrad = [N, grouped](const Shape& s) {
        return N > 0 && grouped ? Tensor::empty(s, DType::f32, Device::cuda) : Tensor::zeros(s, DType::f32, Device::cuda);
      };
      Tensor d1 = wgrad({E, H, D}), d3 = wgrad({E, H, D}), d2 = wgrad({E, D, H});
      if (grouped) {
        dx = Tensor::empty({N, D}, DType::bf16, Device::cuda);
        if (N > 0)
          experts_backward(dv(xb), dv(b1), dv(b3), dv(b2), i32(off), int(E), N, D, H, dv(h1), dv(h3), dv(h), dv(dy),
                           dv(dx), d1.device_data<float>(), d3.device_data<float>(), d2.device_data<float>());
      } else {
        dx = Tensor::empty({N, D}, DType::f32, Device::cuda);
        if (N > 0) {
          Tensor dh = Tensor::empty({N, H}, DType::bf16, Device::cuda),
                 dh1 = Tensor::empty({N, H}, DType::bf16, Device::cuda),
                 dh3 = Tensor::empty({N, H}, DType::bf16, Device::cuda);
          experts_backward_per_expert(dv(xb), dv(b1), dv(b3), dv(b2), offsets, D, H, dv(h1), dv(h3), dv(h), dv(dy),
                                      dx.device_data<float>(), d1.device_data<float>(), d3.device_data<float>(),
                                      d2.device_data<float>(), dv(dh), dv(dh1), dv(dh3));
        }
      }
      if (x.requires_grad()) accumulate_grad(x, dx.dtype() == x.dtype() ? dx : dx.to(x.dtype()));
      accumulate_grad(w1, d1);
      accumulate_grad(w3, d3);
      accumulate_grad(w2, d2);
    });
  return out;
}

}  // namespace moe::cuda
