// The dense transformer ops of the CUDA backend (embedding, RMSNorm, linear, RoPE, causal attention,
// cross-entropy): forward kernels, and backward kernels recorded on the autograd tape.
//
// Mixed precision (core/device.h): the input activation's dtype (fp32 or bf16) is the compute
// dtype T; fp32 master weights are cast to T where they multiply (a device copy per call, kept by
// linear's backward for its dx until the step's backward has run), products accumulate in fp32,
// outputs and activation grads are T, weight grads fp32.
// Dense products go through dense_gemm: cuBLAS on a GPU, the SIMT kernel (gemm_simt.h) under the
// emulation, which does not emulate cuBLAS.
#include <cmath>
#include <string>

#include "core/autograd.h"
#include "core/cuda/attention.h"
#include "core/cuda/embedding.h"
#include "core/cuda/loss.h"
#include "core/cuda/norm.h"
#include "core/cuda/ops/cuda_backend.h"
#include "core/cuda/ops/dense_gemm.h"
#include "core/cuda/reduce.h"
#include "core/cuda/rope.h"

namespace moe::cuda {
namespace {

// Calls f(float{}) or f(bf16{}) for the activation dtype; anything else is refused naming the op.
template <class F>
decltype(auto) with_activation(DType dt, const char* op, const char* what, const Tensor& t, F&& f) {
  if (dt == DType::f32) return f(float{});
  if (dt == DType::bf16) return f(bf16{});
  MOE_FAIL(op, what, " ", t.shape_str(), " is ", dtype_name(dt), " on the cuda device; expected f32 or bf16");
}

template <class T>
T* ptr(const Tensor& t) {
  return t.device_data<T>();
}

// The device, checked: every defined tensor on the cuda device.
void check_on_device(const char* op, std::initializer_list<Tensor> ts) {
  MOE_CHECK(common_device(op, ts) == Device::cuda, op, "expected tensors on the cuda device");
}

// A floating activation (f32 or bf16).
DType activation_of(const char* op, const char* what, const Tensor& t) {
  MOE_CHECK(t.dtype() == DType::f32 || t.dtype() == DType::bf16, op, what, " ", t.shape_str(), " is ",
            dtype_name(t.dtype()), " on the cuda device; expected f32 or bf16");
  return t.dtype();
}

// A parameter multiplied with activations of dtype `act`: fp32 (the master) or already `act`.
void check_param(const char* op, const char* what, const Tensor& p, DType act) {
  MOE_CHECK(p.dtype() == DType::f32 || p.dtype() == act, op, what, " ", p.shape_str(), " is ", dtype_name(p.dtype()),
            "; expected f32 (the master weight) or the activation dtype ", dtype_name(act));
}

// A detached contiguous copy (or view) of t in dtype dt, on the device.
Tensor as_dtype(const Tensor& t, DType dt) { return t.detach().to(dt).contiguous(); }

void check_index(const char* op, const char* what, const Tensor& t) {
  MOE_CHECK(t.dtype() == DType::i32 || t.dtype() == DType::i64, op, what, " ", t.shape_str(), " is ",
            dtype_name(t.dtype()), "; expected i32 or i64");
}

// The grad of one output of a multi-output node, or undefined when it is not on the device (a
// tape that hands host zeros for an output no grad flowed into: it must not reach a kernel).
Tensor device_grad(const Tensor& g) { return g.defined() && g.device() == Device::cuda ? g.contiguous() : Tensor(); }

}  // namespace

Tensor Backend::embedding(const Tensor& weight, const Tensor& ids) {
  const char* op = "embedding";
  MOE_CHECK(weight.defined() && ids.defined(), op, "undefined input");
  check_on_device(op, {weight, ids});
  MOE_CHECK(weight.dim() == 2, op, "expected weight [V, D], got ", weight.shape_str(), " (ids ", ids.shape_str(), ")");
  check_index(op, "ids", ids);
  const DType act = activation_dtype();
  MOE_CHECK(act == DType::f32 || act == DType::bf16, op, "the backend's activation dtype is ", dtype_name(act),
            "; expected f32 or bf16");
  check_param(op, "weight", weight, act);
  const long vocab = long(weight.shape()[0]), d = long(weight.shape()[1]), n = long(ids.numel());
  Shape out_shape = ids.shape();
  out_shape.push_back(d);
  Tensor idc = ids.detach().to(DType::i64).contiguous();
  Tensor wc = weight.detach().contiguous();
  Tensor rows = Tensor::empty({n, d}, weight.dtype(), Device::cuda);
  if (n > 0 && d > 0)
    with_activation(weight.dtype(), op, "weight", weight, [&](auto tag) {
      using W = decltype(tag);
      // Throws "id X at position P of N ids is outside the vocabulary [0, V) ..." (it synchronizes).
      embedding_forward<W>(ptr<W>(wc), ptr<int64_t>(idc), ptr<W>(rows), n, vocab, d);
    });
  // The residual stream stays fp32 (as under PyTorch autocast): the embedding's output is fp32
  // whatever the activation dtype; RMSNorm hands the bf16 copy to the products.
  Tensor out = rows.reshape(out_shape);
  if (needs_grad({weight}))
    record(op, {out}, [weight, idc, n, vocab, d](const std::vector<Tensor>& g) {
      Tensor go = g[0].contiguous();
      Tensor dw = Tensor::zeros({vocab, d}, DType::f32, Device::cuda);
      if (n > 0 && d > 0)
        with_activation(go.dtype(), "embedding backward", "grad", go, [&](auto tag) {
          using T = decltype(tag);
          embedding_backward<T>(ptr<T>(go), ptr<int64_t>(idc), ptr<float>(dw), n, vocab, d);
        });
      accumulate_grad(weight, dw);
    });
  return out;
}

Tensor Backend::rms_norm(const Tensor& x, const Tensor& weight, double eps) {
  const char* op = "rms_norm";
  MOE_CHECK(x.defined() && weight.defined(), op, "undefined input");
  check_on_device(op, {x, weight});
  MOE_CHECK(x.dim() >= 1, op, "expected x [..., D], got a 0-dim tensor");
  const long d = long(x.shape().back());
  MOE_CHECK(weight.dim() == 1 && weight.shape()[0] == d, op, "weight ", weight.shape_str(), " does not match x ",
            x.shape_str(), " (expected [", d, "])");
  MOE_CHECK(eps >= 0, op, "eps must be >= 0, got ", eps);
  const DType act = activation_of(op, "x", x);
  check_param(op, "weight", weight, act);
  const long rows = d == 0 ? 0 : long(x.numel() / d);
  Tensor xc = x.detach().contiguous(), wa = as_dtype(weight, act);
  Tensor out = Tensor::empty(x.shape(), act, Device::cuda);
  Tensor rstd = Tensor::empty({rows}, DType::f32, Device::cuda);
  with_activation(act, op, "x", x, [&](auto tag) {
    using T = decltype(tag);
    if (rows > 0) rms_norm_forward<T>(ptr<T>(xc), ptr<T>(wa), ptr<T>(out), ptr<float>(rstd), rows, d, float(eps));
  });
  if (needs_grad({x, weight}))
    record(op, {out}, [x, weight, xc, rstd, rows, d, act](const std::vector<Tensor>& g) {
      Tensor go = g[0].contiguous();
      Tensor wa = as_dtype(weight, act);
      Tensor dx = Tensor::empty(x.shape(), act, Device::cuda);
      Tensor dw = Tensor::zeros({d}, DType::f32, Device::cuda);
      with_activation(act, "rms_norm backward", "x", x, [&](auto tag) {
        using T = decltype(tag);
        if (rows > 0)
          rms_norm_backward<T>(ptr<T>(go), ptr<T>(xc), ptr<T>(wa), ptr<float>(rstd), ptr<T>(dx), ptr<float>(dw), rows,
                               d);
      });
      accumulate_grad(x, dx);
      accumulate_grad(weight, dw);
    });
  // An fp32 residual stream normalized for bf16 products: the output in the activation dtype
  // (a differentiable cast; its grad returns to fp32).
  if (act == DType::f32 && activation_dtype() == DType::bf16) return out.to(DType::bf16);
  return out;
}

Tensor Backend::linear(const Tensor& x, const Tensor& w, const Tensor& bias) {
  const char* op = "linear";
  MOE_CHECK(x.defined() && w.defined(), op, "undefined input");
  check_on_device(op, {x, w, bias});
  MOE_CHECK(w.dim() == 2 && x.dim() >= 1 && x.shape().back() == w.shape()[1], op, "cannot apply weight ",
            w.shape_str(), " (expected [out, in]) to input ", x.shape_str(), " (expected [..., in])");
  const DType act = activation_of(op, "input", x);
  check_param(op, "weight", w, act);
  const long in = long(w.shape()[1]), out_f = long(w.shape()[0]);
  if (bias.defined()) {
    MOE_CHECK(bias.dim() == 1 && bias.shape()[0] == out_f, op, "bias ", bias.shape_str(), " does not match weight ",
              w.shape_str(), " (expected [", out_f, "])");
    check_param(op, "bias", bias, act);
  }
  const long rows = long(shape_numel(Shape(x.shape().begin(), x.shape().end() - 1)));
  Shape out_shape = x.shape();
  out_shape.back() = out_f;
  Tensor x2 = x.detach().contiguous();
  // The GEMMs overwrite every element unless there is nothing to multiply (in = 0) and no bias.
  Tensor out = in == 0 && !bias.defined() ? Tensor::zeros({rows, out_f}, act, Device::cuda)
                                          : Tensor::empty({rows, out_f}, act, Device::cuda);
  const Tensor wa = as_dtype(w, act);  // kept for the backward's dx: one cast per step, not two
  with_activation(act, op, "input", x, [&](auto tag) {
    using T = decltype(tag);
    float beta = 0.0f;
    if (bias.defined()) {  // out = ones [rows, 1] x bias [1, out]: the bias in every row, then += x w^T
      Tensor ones = Tensor::ones({rows, 1}, act, Device::cuda), ba = as_dtype(bias, act);
      dense_gemm<T, T>(false, false, rows, out_f, 1, 1.0f, ptr<T>(ones), 1, ptr<T>(ba), out_f, 0.0f, ptr<T>(out),
                       out_f);
      beta = 1.0f;
    }
    dense_gemm<T, T>(false, true, rows, out_f, in, 1.0f, ptr<T>(x2), in, ptr<T>(wa), in, beta, ptr<T>(out), out_f);
  });
  out = out.reshape(out_shape);
  if (needs_grad({x, w, bias}))
    record(op, {out}, [x, w, wa = x.requires_grad() ? wa : Tensor(), bias, x2, rows, in, out_f,
                       act](const std::vector<Tensor>& g) {
      Tensor g2 = g[0].contiguous();
      with_activation(act, "linear backward", "input", x, [&](auto tag) {
        using T = decltype(tag);
        if (x.requires_grad()) {  // dx = g w (activation dtype)
          Tensor dx = out_f == 0 ? Tensor::zeros({rows, in}, act, Device::cuda)
                                 : Tensor::empty({rows, in}, act, Device::cuda);
          dense_gemm<T, T>(false, false, rows, in, out_f, 1.0f, ptr<T>(g2), out_f, ptr<T>(wa), in, 0.0f, ptr<T>(dx),
                           in);
          accumulate_grad(x, dx.reshape(x.shape()));
        }
        if (w.requires_grad()) {  // dw = g^T x, accumulated and returned in fp32
          Tensor dw = rows == 0 ? Tensor::zeros({out_f, in}, DType::f32, Device::cuda)
                                : Tensor::empty({out_f, in}, DType::f32, Device::cuda);
          dense_gemm<T, float>(true, false, out_f, in, rows, 1.0f, ptr<T>(g2), out_f, ptr<T>(x2), in, 0.0f,
                               ptr<float>(dw), in);
          accumulate_grad(w, dw);
        }
        if (bias.defined() && bias.requires_grad()) {  // column sums of g in row order (fp32)
          Tensor db = Tensor::zeros({out_f}, DType::f32, Device::cuda);
          if (rows > 0 && out_f > 0) col_sum<T>(ptr<T>(g2), ptr<float>(db), rows, out_f);
          accumulate_grad(bias, db);
        }
      });
    });
  return out;
}

std::vector<Tensor> Backend::linear_shared_input(const Tensor& x, const std::vector<Tensor>& weights) {
  const char* op = "linear_shared_input";
  MOE_CHECK(x.defined() && x.dim() >= 1 && !weights.empty(), op, "expected x [..., in] and at least one weight");
  check_on_device(op, {x});
  const DType act = activation_of(op, "input", x);
  const long in = long(x.shape().back());
  for (const Tensor& w : weights) {
    MOE_CHECK(w.defined() && w.dim() == 2 && w.shape()[1] == in, op, "cannot apply weight ",
              w.defined() ? w.shape_str() : "undefined", " (expected [out, ", in, "]) to input ", x.shape_str());
    check_on_device(op, {x, w});
    check_param(op, "weight", w, act);
  }
  const long rows = long(shape_numel(Shape(x.shape().begin(), x.shape().end() - 1)));
  Tensor x2 = x.detach().contiguous();
  // One GEMM per weight (a concatenated weight would need a copy of the masters every step). The
  // weights in the activation dtype are kept for the backward's dx: one cast per step, not two.
  std::vector<Tensor> outs, cast_weights;
  for (const Tensor& w : weights) {
    const long out_f = long(w.shape()[0]);
    Tensor y = in == 0 ? Tensor::zeros({rows, out_f}, act, Device::cuda)
                       : Tensor::empty({rows, out_f}, act, Device::cuda);
    const Tensor& wa = cast_weights.emplace_back(as_dtype(w, act));
    with_activation(act, op, "input", x, [&](auto tag) {
      using T = decltype(tag);
      dense_gemm<T, T>(false, true, rows, out_f, in, 1.0f, ptr<T>(x2), in, ptr<T>(wa), in, 0.0f, ptr<T>(y), out_f);
    });
    Shape shape = x.shape();
    shape.back() = out_f;
    outs.push_back(y.reshape(shape));
  }
  std::vector<Tensor> inputs = weights;
  inputs.push_back(x);
  if (!x.requires_grad()) cast_weights.assign(weights.size(), Tensor());  // no dx: nothing to keep
  if (needs_grad(inputs))
    record(op, outs, [x, weights, cast_weights, x2, rows, in, act](const std::vector<Tensor>& g) {
      with_activation(act, "linear_shared_input backward", "input", x, [&](auto tag) {
        using T = decltype(tag);
        Tensor dx = x.requires_grad() ? Tensor::empty({rows, in}, act, Device::cuda) : Tensor();
        float beta = 0.0f;  // dx = sum_i g_i w_i, in weight order
        for (size_t i = 0; i < weights.size(); ++i) {
          Tensor gi = device_grad(g[i]);
          const long out_f = long(weights[i].shape()[0]);
          if (!gi.defined()) {  // nothing flowed into this output: a zero weight grad, as on the CPU
            if (weights[i].requires_grad())
              accumulate_grad(weights[i], Tensor::zeros(weights[i].shape(), DType::f32, Device::cuda));
            continue;
          }
          if (dx.defined() && out_f > 0) {
            const Tensor& wa = cast_weights[i];
            dense_gemm<T, T>(false, false, rows, in, out_f, 1.0f, ptr<T>(gi), out_f, ptr<T>(wa), in, beta,
                             ptr<T>(dx), in);
            if (rows > 0 && in > 0) beta = 1.0f;
          }
          if (weights[i].requires_grad()) {
            Tensor dw = rows == 0 ? Tensor::zeros({out_f, in}, DType::f32, Device::cuda)
                                  : Tensor::empty({out_f, in}, DType::f32, Device::cuda);
            dense_gemm<T, float>(true, false, out_f, in, rows, 1.0f, ptr<T>(gi), out_f, ptr<T>(x2), in, 0.0f,
                                 ptr<float>(dw), in);
            accumulate_grad(weights[i], dw);
          }
        }
        if (dx.defined()) {
          if (beta == 0.0f) dx.zero_();  // no product ran (no grads, or empty shapes)
          accumulate_grad(x, dx.reshape(x.shape()));
        }
      });
    });
  return outs;
}

Tensor Backend::rope(const Tensor& x, double theta, int64_t pos_offset) {
  const char* op = "rope";
  check_on_device(op, {x});
  MOE_CHECK(x.dim() == 4, op, "x must be [B, S, H, Dh], got ", x.shape_str());
  MOE_CHECK(x.shape()[3] % 2 == 0, op, "head dim Dh must be even, got ", x.shape()[3], " in x ", x.shape_str());
  MOE_CHECK(theta > 0, op, "theta must be positive, got ", theta);
  MOE_CHECK(pos_offset >= 0, op, "pos_offset must be >= 0, got ", pos_offset);
  const DType act = activation_of(op, "x", x);
  const long B = long(x.shape()[0]), S = long(x.shape()[1]), H = long(x.shape()[2]), Dh = long(x.shape()[3]);
  Tensor xc = x.detach().contiguous();
  Tensor out = Tensor::empty(x.shape(), act, Device::cuda);
  with_activation(act, op, "x", x, [&](auto tag) {
    using T = decltype(tag);
    if (out.numel() > 0) rope_forward<T>(ptr<T>(xc), ptr<T>(out), B, S, H, Dh, theta, pos_offset);
  });
  if (needs_grad({x}))
    record(op, {out}, [x, B, S, H, Dh, theta, pos_offset, act](const std::vector<Tensor>& g) {
      Tensor go = g[0].contiguous();
      Tensor dx = Tensor::empty(x.shape(), act, Device::cuda);
      with_activation(act, "rope backward", "x", x, [&](auto tag) {
        using T = decltype(tag);
        if (dx.numel() > 0) rope_backward<T>(ptr<T>(go), ptr<T>(dx), B, S, H, Dh, theta, pos_offset);
      });
      accumulate_grad(x, dx);
    });
  return out;
}

Tensor Backend::causal_attention_bshd(const Tensor& q, const Tensor& k, const Tensor& v) {
  const char* op = "causal_attention_bshd";
  MOE_CHECK(q.defined() && k.defined() && v.defined(), op, "undefined input");
  check_on_device(op, {q, k, v});
  MOE_CHECK(q.dim() == 4, op, "q must be [B, S, H, Dh], got ", q.shape_str());
  MOE_CHECK(k.shape() == q.shape() && v.shape() == q.shape(), op, "q ", q.shape_str(), ", k ", k.shape_str(),
            " and v ", v.shape_str(), " must have the same shape");
  MOE_CHECK(k.dtype() == q.dtype() && v.dtype() == q.dtype(), op, "dtypes differ: q ", dtype_name(q.dtype()), ", k ",
            dtype_name(k.dtype()), ", v ", dtype_name(v.dtype()));
  const DType act = activation_of(op, "q", q);
  const long B = long(q.shape()[0]), S = long(q.shape()[1]), H = long(q.shape()[2]);
  const int Dh = int(q.shape()[3]);
  MOE_CHECK(Dh >= 1 && Dh <= kFlashMaxHeadDim, op, "head dim ", q.shape()[3], " of q ", q.shape_str(),
            " is outside the flash-attention kernels' [1, ", kFlashMaxHeadDim, "]");
  MOE_CHECK(H >= 1 && B * H <= 65535, op, "batch * heads = ", B * H, " of q ", q.shape_str(),
            " is outside the kernels' [1, 65535]");
  Tensor qc = q.detach().contiguous(), kc = k.detach().contiguous(), vc = v.detach().contiguous();
  Tensor out = Tensor::empty(q.shape(), act, Device::cuda);
  Tensor lse = Tensor::empty({B, H, S}, DType::f32, Device::cuda);
  with_activation(act, op, "q", q, [&](auto tag) {
    using T = decltype(tag);
    if (out.numel() > 0)
      flash_attention_forward<T>(ptr<T>(qc), ptr<T>(kc), ptr<T>(vc), ptr<T>(out), ptr<float>(lse), B, H, S, Dh,
                                 AttentionLayout::kBSHD);
  });
  if (needs_grad({q, k, v})) {
    Tensor saved_out = out.detach();  // the same storage, without a reference cycle through the node
    record(op, {out}, [q, k, v, qc, kc, vc, saved_out, lse, B, H, S, Dh, act](const std::vector<Tensor>& g) {
      Tensor go = g[0].contiguous();
      Tensor dq = Tensor::empty(q.shape(), act, Device::cuda), dk = Tensor::empty(q.shape(), act, Device::cuda),
             dv = Tensor::empty(q.shape(), act, Device::cuda);
      with_activation(act, "causal_attention_bshd backward", "q", q, [&](auto tag) {
        using T = decltype(tag);
        if (dq.numel() > 0)
          flash_attention_backward<T>(ptr<T>(qc), ptr<T>(kc), ptr<T>(vc), ptr<T>(saved_out), ptr<float>(lse),
                                      ptr<T>(go), ptr<T>(dq), ptr<T>(dk), ptr<T>(dv), B, H, S, Dh,
                                      AttentionLayout::kBSHD);
      });
      accumulate_grad(q, dq);
      accumulate_grad(k, dk);
      accumulate_grad(v, dv);
    });
  }
  return out;
}

Tensor Backend::cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index) {
  const char* op = "cross_entropy";
  MOE_CHECK(logits.defined() && targets.defined(), op, "undefined input");
  check_on_device(op, {logits, targets});
  MOE_CHECK(logits.dim() == 2 && targets.dim() == 1 && targets.shape()[0] == logits.shape()[0], op,
            "expected logits [N, V] and targets [N], got logits ", logits.shape_str(), " and targets ",
            targets.shape_str());
  check_index(op, "targets", targets);
  const DType act = activation_of(op, "logits", logits);
  const long n = long(logits.shape()[0]), vocab = long(logits.shape()[1]);
  MOE_CHECK(vocab > 0 || n == 0, op, "logits ", logits.shape_str(), " have no classes");
  Tensor tc = targets.detach().to(DType::i64).contiguous();
  Tensor xc = logits.detach().contiguous();
  Tensor lse = Tensor::empty({n}, DType::f32, Device::cuda);
  Tensor stats = Tensor::zeros({2}, DType::f32, Device::cuda);  // {mean loss, counted rows}
  if (n > 0) {
    with_activation(act, op, "logits", logits, [&](auto tag) {
      using T = decltype(tag);
      cross_entropy_forward<T>(ptr<T>(xc), ptr<int64_t>(tc), ptr<float>(lse), ptr<float>(stats), n, vocab,
                               ignore_index);
    });
    // The kernel turns a bad target into a NaN loss; reading the loss (one float, a synchronization
    // the trainer makes anyway to log it) finds it, and then the host names the first bad row as
    // the CPU op does. A NaN from the logits themselves is returned as it is.
    if (std::isnan(stats.select(0, 0).item_double())) {
      const std::vector<int64_t> t = tc.to_vector<int64_t>();
      for (long r = 0; r < n; ++r)
        MOE_CHECK(t[size_t(r)] == ignore_index || (t[size_t(r)] >= 0 && t[size_t(r)] < vocab), op, "target ",
                  t[size_t(r)], " at row ", r, " is outside [0, ", vocab, ") for logits ", logits.shape_str(),
                  " (ignore_index is ", ignore_index, ")");
    }
  }
  Tensor out = stats.select(0, 0).clone();
  if (needs_grad({logits}))
    record(op, {out}, [logits, xc, tc, lse, stats, n, vocab, ignore_index, act](const std::vector<Tensor>& g) {
      const float dloss = float(g[0].item_double());
      Tensor dx = Tensor::empty(logits.shape(), act, Device::cuda);
      with_activation(act, "cross_entropy backward", "logits", logits, [&](auto tag) {
        using T = decltype(tag);
        if (n > 0)
          cross_entropy_backward<T>(ptr<T>(xc), ptr<int64_t>(tc), ptr<float>(lse), ptr<float>(stats), dloss,
                                    ptr<T>(dx), n, vocab, ignore_index);
      });
      accumulate_grad(logits, dx);
    });
  return out;
}

}  // namespace moe::cuda
