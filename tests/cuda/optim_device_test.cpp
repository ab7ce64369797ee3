// The optimizer with parameters on the cuda device against the same optimizer on the CPU: AdamW
// (fused kernel, moments on the device, state export / import), global-norm clipping (sums of
// squares on the device, in-place scaling) and the backend's optimizer ops on their own.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <functional>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "core/cuda/ops/cuda_backend.h"
#include "core/device.h"
#include "core/rng.h"
#include "optim/adamw.h"
#include "optim/clip.h"
#include "parallel/communicator.h"
#include "recipes/parallel_grads.h"
#include "tests/cuda/device_test_util.h"

namespace moe {
namespace {

class OptimDevice : public ::testing::Test {
 protected:
  void SetUp() override {
    cuda::install_backend("OptimDevice");
    cuda_backend("OptimDevice").set_activation_dtype(DType::f32);
  }
};

using test::random_host;

// A leaf parameter on the device holding the host tensor's values.
Tensor device_param(const Tensor& host) {
  Tensor d = host.detach().to(Device::cuda);
  d.set_requires_grad(true);
  return d;
}

struct Diff {
  double max_abs = 0, max_ref = 0;
  int64_t differing = 0;  // elements not bit-equal
  double rel() const { return max_ref > 0 ? max_abs / max_ref : max_abs; }
};

// |device - cpu| relative to the largest |cpu| entry of the tensor.
Diff compare(const Tensor& device, const Tensor& cpu) {
  const std::vector<float> d = device.to(Device::cpu).to_vector<float>(), c = cpu.to_vector<float>();
  EXPECT_EQ(d.size(), c.size());
  Diff r;
  for (size_t i = 0; i < d.size() && i < c.size(); ++i) {
    r.max_abs = std::max(r.max_abs, std::abs(double(d[i]) - double(c[i])));
    r.max_ref = std::max(r.max_ref, std::abs(double(c[i])));
    r.differing += d[i] != c[i];
  }
  return r;
}

constexpr double kRel = 1e-6;  // fp32, same formula and coefficients (see the tests)

// Parameters of several shapes: matrices and a 3-d expert tensor decay, the 1-d gain does not.
std::vector<std::pair<std::string, Shape>> param_shapes() {
  return {{"blocks.0.attn.wq.weight", {7, 13}}, {"blocks.0.norm1.weight", {13}}, {"experts.w1", {3, 5, 9}},
          {"lm_head.weight", {11, 13}}};
}

// 5 steps at changing learning rates and clip factors (step(lr, grad_scale): each grad read as
// g * grad_scale), weight decay on for the >= 2-d tensors, one parameter
// without a grad on step 3 (its own step count falls behind): the device update follows the
// CPU's to 1e-6 of each tensor's largest entry, moments and step counts included. The kernel
// uses the CPU loop's fp32 coefficients and order of operations, so under the emulation it is
// bit-exact unless the host compiler contracts the two loops into FMAs differently; on a GPU
// nvcc's FMA contraction costs about one ulp per step.
TEST_F(OptimDevice, AdamWFollowsTheCpuOverFiveSteps) {
  std::vector<std::pair<std::string, Tensor>> cpu, dev;
  uint64_t seed = 10;
  for (auto& [name, shape] : param_shapes()) {
    Tensor h = random_host(shape, seed++, 0.5);
    h.set_requires_grad(true);
    cpu.emplace_back(name, h.clone().set_requires_grad(true));
    dev.emplace_back(name, device_param(h));
  }
  AdamWConfig cfg{0.9, 0.95, 1e-8, 0.1};
  AdamW a(cpu, cfg), b(dev, cfg);
  ASSERT_TRUE(a.decays("experts.w1"));
  ASSERT_FALSE(a.decays("blocks.0.norm1.weight"));
  const double lrs[] = {1e-2, 3e-3, 7e-3, 5e-4, 2e-2}, scales[] = {1.0, 0.37, 1.0, 0.5, 0.0123};
  for (int step = 0; step < 5; ++step) {
    for (size_t i = 0; i < cpu.size(); ++i) {
      if (step == 2 && i == 1) {  // no grad: skipped, moments and step untouched
        cpu[i].second.zero_grad();
        dev[i].second.zero_grad();
        continue;
      }
      Tensor g = random_host(cpu[i].second.shape(), 1000 + 17 * uint64_t(step) + i, step == 4 ? 30.0 : 1.0);
      cpu[i].second.set_grad(g);
      dev[i].second.set_grad(g.to(Device::cuda));
    }
    a.step(lrs[step], scales[step]);
    b.step(lrs[step], scales[step]);
  }
  const auto am = a.exp_avg(), av = a.exp_avg_sq(), as = a.steps();
  const auto bm = b.exp_avg(), bv = b.exp_avg_sq(), bs = b.steps();
  int64_t differing = 0;
  double worst = 0;
  for (size_t i = 0; i < cpu.size(); ++i) {
    const std::string& name = cpu[i].first;
    ASSERT_EQ(dev[i].second.device(), Device::cuda) << name;
    EXPECT_EQ(bm.at(name).device(), Device::cpu) << "exported moments come back to the host";
    EXPECT_EQ(as.at(name).item_double(), bs.at(name).item_double()) << name;
    for (auto [what, d] : {std::pair{"param", compare(dev[i].second, cpu[i].second)},
                           std::pair{"exp_avg", compare(bm.at(name), am.at(name))},
                           std::pair{"exp_avg_sq", compare(bv.at(name), av.at(name))}}) {
      EXPECT_LE(d.rel(), kRel) << name << " " << what << ": max |device - cpu| " << d.max_abs << " of " << d.max_ref;
      differing += d.differing;
      worst = std::max(worst, d.rel());
    }
  }
  EXPECT_EQ(as.at("blocks.0.norm1.weight").item_double(), 4.0);
  std::printf("[ info ] AdamW device vs CPU after 5 steps: %lld elements not bit-equal, max relative diff %.3g (%s)\n",
              static_cast<long long>(differing), worst, cuda_backend("info").describe().c_str());
}

// A bf16 grad is read as it is by the fused kernel: the same update as the CPU's with that
// grad converted to f32 (exactly representable), so the same 1e-6 bound holds.
TEST_F(OptimDevice, AdamWTakesABf16Grad) {
  Tensor h = random_host({9, 7}, 3);
  Tensor pc = h.clone().set_requires_grad(true), pd = device_param(h);
  AdamW a({{"w", pc}}), b({{"w", pd}});
  for (int step = 0; step < 2; ++step) {
    Tensor g = random_host({9, 7}, 40 + uint64_t(step)).to(DType::bf16);
    pc.set_grad(g.to(DType::f32));
    pd.set_grad(g.to(Device::cuda));
    a.step(1e-2);
    b.step(1e-2);
  }
  Diff d = compare(pd, pc);
  EXPECT_LE(d.rel(), kRel) << d.max_abs;
  d = compare(b.exp_avg_sq().at("w"), a.exp_avg_sq().at("w"));
  EXPECT_LE(d.rel(), kRel) << d.max_abs;
}

// State saved from a CPU optimizer loads into a device optimizer (and back): both continue the
// same run; moments of the device optimizer stay on the device (its updates keep matching).
TEST_F(OptimDevice, StateMovesBetweenDevices) {
  Tensor h = random_host({6, 11}, 5);
  Tensor g1 = random_host({6, 11}, 6), g2 = random_host({6, 11}, 7);
  Tensor pc = h.clone().set_requires_grad(true);
  AdamW a({{"w", pc}});
  pc.set_grad(g1);
  a.step(1e-2);

  Tensor pd = device_param(pc.detach());
  AdamW b({{"w", pd}});
  b.load_state(a.exp_avg(), a.exp_avg_sq(), a.steps());  // host state into device moments
  EXPECT_EQ(compare(b.exp_avg().at("w"), a.exp_avg().at("w")).differing, 0);
  EXPECT_EQ(b.steps().at("w").item_double(), 1.0);
  pc.set_grad(g2);
  pd.set_grad(g2.to(Device::cuda));
  a.step(5e-3);
  b.step(5e-3);
  EXPECT_LE(compare(pd, pc).rel(), kRel);
  EXPECT_LE(compare(b.exp_avg_sq().at("w"), a.exp_avg_sq().at("w")).rel(), kRel);

  // Device-resident maps load too (copy on the device), and into a CPU optimizer.
  std::map<std::string, Tensor> dm{{"w", b.exp_avg().at("w").to(Device::cuda)}},
      dv{{"w", b.exp_avg_sq().at("w").to(Device::cuda)}};
  Tensor pc2 = pd.detach().to(Device::cpu).set_requires_grad(true);
  AdamW c({{"w", pc2}});
  c.load_state(dm, dv, b.steps());
  EXPECT_EQ(compare(c.exp_avg().at("w"), b.exp_avg().at("w")).differing, 0);
  EXPECT_EQ(compare(c.exp_avg_sq().at("w"), b.exp_avg_sq().at("w")).differing, 0);
  EXPECT_EQ(c.exp_avg().at("w").device(), Device::cpu);
}

TEST_F(OptimDevice, AdamWRefusesWhatTheKernelCannotUpdate) {
  Tensor p64 = Tensor::zeros({3}, DType::f64, Device::cuda).set_requires_grad(true);
  try {
    AdamW bad({{"w64", p64}});
    FAIL() << "expected a throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'w64' on the cuda device must be f32"), std::string::npos) << e.what();
  }
  Tensor pd = Tensor::zeros({3}, DType::f32, Device::cuda).set_requires_grad(true);
  AdamW opt({{"w", pd}});
  pd.set_grad(Tensor::ones({3}));  // a host grad for a device parameter
  try {
    opt.step(1e-3);
    FAIL() << "expected a throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("grad of 'w' is on the cpu"), std::string::npos) << e.what();
  }
}

// Global norm: one fp32 reduction per device grad (fixed order), summed in double: within 1e-6
// of the CPU's double sum. Clipping scales every device grad in place by the same float factor
// as the CPU's mul_scalar, so the clipped grads agree to the norms' difference (1e-6).
TEST_F(OptimDevice, ClipMatchesTheCpuAndScalesDeviceGrads) {
  std::vector<Tensor> cpu, dev;
  uint64_t seed = 50;
  for (auto& [name, shape] : param_shapes()) {
    Tensor h = random_host(shape, seed++);
    Tensor pc = h.clone().set_requires_grad(true), pd = device_param(h);
    Tensor g = random_host(shape, seed++, 3.0);
    pc.set_grad(g);
    pd.set_grad(g.to(Device::cuda));
    cpu.push_back(pc);
    dev.push_back(pd);
  }
  // A parameter without a grad, one with a large grad (5000 elements: several blocks' partials).
  Tensor nograd = Tensor::zeros({4}, DType::f32, Device::cuda).set_requires_grad(true);
  dev.push_back(nograd);
  Tensor big_h = Tensor::zeros({50, 100}).set_requires_grad(true), big_d = device_param(big_h);
  Tensor big_g = random_host({50, 100}, 99, 0.25);
  big_h.set_grad(big_g);
  big_d.set_grad(big_g.to(Device::cuda));
  cpu.push_back(big_h);
  dev.push_back(big_d);
  std::vector<Tensor> paired = dev;  // the device twin of cpu[i]
  paired.erase(paired.end() - 2);

  const double nc = global_grad_norm(cpu), nd = global_grad_norm(dev);
  EXPECT_NEAR(nd, nc, kRel * nc);
  std::printf("[ info ] global grad norm: cpu %.9g, device %.9g (relative diff %.3g)\n", nc, nd,
              std::abs(nd - nc) / nc);

  const double max_norm = 0.25 * nc;
  EXPECT_NEAR(clip_grad_norm(dev, max_norm), nc, kRel * nc);
  EXPECT_DOUBLE_EQ(clip_grad_norm(cpu, max_norm), nc);
  for (size_t i = 0; i < cpu.size(); ++i) {
    const Tensor& pd = paired[i];
    ASSERT_EQ(pd.grad().device(), Device::cuda);
    const Diff d = compare(pd.grad(), cpu[i].grad());
    EXPECT_LE(d.rel(), 2 * kRel) << "grad " << i << ": " << d.max_abs << " of " << d.max_ref;
  }
  EXPECT_FALSE(nograd.grad().defined());
  EXPECT_NEAR(global_grad_norm(dev), max_norm, 1e-5 * max_norm);
  // Below max_norm nothing changes.
  const std::vector<float> before = big_d.grad().to_vector<float>();
  clip_grad_norm(dev, 10 * nc);
  EXPECT_EQ(big_d.grad().to_vector<float>(), before);
}

// Two parameters sharing one device grad buffer: scaled once, as the CPU path (which replaces
// grads) leaves it.
TEST_F(OptimDevice, SharedDeviceGradIsScaledOnce) {
  Tensor a = Tensor::zeros({5}, DType::f32, Device::cuda).set_requires_grad(true);
  Tensor b = Tensor::zeros({5}, DType::f32, Device::cuda).set_requires_grad(true);
  Tensor g = Tensor::full({5}, 2.0, DType::f32, Device::cuda);
  a.set_grad(g);
  b.set_grad(g);
  const double norm = clip_grad_norm({a, b}, 1.0);
  EXPECT_NEAR(norm, std::sqrt(40.0), 1e-6);
  const float want = float(2.0 * float(1.0 / (std::sqrt(40.0) + 1e-6)));
  for (float x : a.grad().to_vector<float>()) EXPECT_FLOAT_EQ(x, want);
  for (float x : b.grad().to_vector<float>()) EXPECT_FLOAT_EQ(x, want);
}

// The backend ops alone: sum of squares of f32 / bf16 / a strided view against a double loop
// over the same values (1e-6), scale_ bit-equal to the host's x * float(s).
TEST_F(OptimDevice, BackendSumOfSquaresAndScale) {
  CudaBackend& be = cuda_backend("OptimDevice");
  Tensor h = random_host({37, 29}, 77);
  auto host_ss = [](const Tensor& t) {
    double s = 0;
    for (double x : t.to_double_vector()) s += x * x;
    return s;
  };
  const double want = host_ss(h);
  Tensor hb = h.to(DType::bf16);
  const double want_b = host_ss(hb);
  Tensor view = h.to(Device::cuda).transpose(0, 1).slice(0, 3, 20);
  const double want_v = host_ss(h.transpose(0, 1).slice(0, 3, 20).contiguous());
  // All four in one call (one copy down), each in its own slot.
  const std::vector<double> got = be.sums_of_squares(
      {h.to(Device::cuda), hb.to(Device::cuda), view, Tensor::zeros({0, 3}, DType::f32, Device::cuda)});
  ASSERT_EQ(got.size(), 4u);
  EXPECT_NEAR(got[0], want, kRel * want);
  EXPECT_NEAR(got[1], want_b, kRel * want_b);
  EXPECT_NEAR(got[2], want_v, kRel * want_v);
  EXPECT_EQ(got[3], 0.0);
  EXPECT_TRUE(be.sums_of_squares({}).empty());
  EXPECT_THROW(be.sums_of_squares({h}), Error);  // a host tensor

  Tensor d = h.to(Device::cuda);
  be.scale_(d, -0.37);
  std::vector<float> hv = h.to_vector<float>();
  for (float& x : hv) x = x * float(-0.37);
  EXPECT_EQ(d.to_vector<float>(), hv);
  Tensor db = hb.to(Device::cuda);
  be.scale_(db, 0.5);  // exact in bf16
  std::vector<float> hbv = hb.to(DType::f32).to_vector<float>();
  for (float& x : hbv) x *= 0.5f;
  EXPECT_EQ(db.to(DType::f32).to_vector<float>(), hbv);
  EXPECT_THROW(be.scale_(d.transpose(0, 1), 2.0), Error);  // in place needs one flat array
}

// A communicator of `ranks` identical ranks (every all-reduce sum multiplies by ranks), over host
// buffers or, like NCCL, over device buffers in place (under the emulation device memory is host
// memory, so the test can read it either way).
class ReplicaCommunicator final : public Communicator {
 public:
  ReplicaCommunicator(int ranks, bool device) : ranks_(ranks), device_(device) {}
  int rank() const override { return 0; }
  int size() const override { return ranks_; }
  std::string backend() const override { return device_ ? "replica (device buffers)" : "replica"; }
  bool takes_device_buffers() const override { return device_; }
  void all_reduce_sum(double* d, size_t n) override { scale(d, n); }
  void all_reduce_sum(float* d, size_t n) override { scale(d, n), ++float_calls; }
  void all_reduce_max(double*, size_t) override {}
  std::vector<double> all_gather(const double* d, size_t n) override { return std::vector<double>(d, d + n); }
  std::vector<uint64_t> all_gather(const uint64_t* d, size_t n) override { return std::vector<uint64_t>(d, d + n); }
  void broadcast(double*, size_t, int) override {}
  void broadcast(uint64_t*, size_t, int) override {}
  void alltoallv(const float*, const std::vector<int64_t>&, float*, const std::vector<int64_t>&) override {}
  void alltoallv(const double*, const std::vector<int64_t>&, double*, const std::vector<int64_t>&) override {}
  void barrier() override {}
  std::shared_ptr<Communicator> split(int, int) override { return nullptr; }
  int float_calls = 0;

 private:
  template <class T>
  void scale(T* d, size_t n) {
    for (size_t i = 0; i < n; ++i) d[i] *= T(ranks_);
  }
  int ranks_;
  bool device_;
};

// Data parallelism on the device: the grads are packed into a device buffer per bucket, summed by
// the communicator (in place when it takes device buffers, else through one host copy each way),
// scaled on the device and unpacked. With 3 identical replicas and scale 1/3 every grad comes back
// equal to itself up to fp32 rounding (1e-6 relative); an undefined grad stays undefined. The
// in-place branch runs under the emulation only: the replica cannot touch GPU memory from the host.
TEST_F(OptimDevice, ParallelGradAllReduceOnTheDevice) {
  std::vector<Tensor> params;
  std::vector<std::vector<float>> want;
  for (int i = 0; i < 4; ++i) {
    Tensor p = Tensor::zeros({3 + i, 5}, DType::f32, Device::cuda).set_requires_grad(true);
    p.set_name("p" + std::to_string(i));
    if (i != 2) {  // p2 has no grad on any rank
      Tensor g = test::random_host({3 + i, 5}, 40 + uint64_t(i));
      want.push_back(g.to_vector<float>());
      p.set_grad(g.to(Device::cuda));
    } else {
      want.emplace_back();
    }
    params.push_back(p);
  }
#ifdef MOE_CUDA_EMULATION
  for (bool device_buffers : {false, true}) {
#else
  for (bool device_buffers : {false}) {
#endif
    SCOPED_TRACE(device_buffers ? "device buffers (NCCL-like)" : "host buffers (MPI)");
    ReplicaCommunicator comm(3, device_buffers);
    all_reduce_grads(params, comm, 1.0 / 3.0);
    EXPECT_EQ(comm.float_calls, 1) << "the four small parameters share one bucket";
    for (size_t i = 0; i < params.size(); ++i) {
      if (i == 2) {
        EXPECT_FALSE(params[i].grad().defined());
        continue;
      }
      Tensor g = params[i].grad();
      ASSERT_TRUE(g.defined());
      EXPECT_EQ(g.device(), Device::cuda);
      EXPECT_EQ(g.shape(), params[i].shape());
      std::vector<float> got = g.to_vector<float>();
      for (size_t k = 0; k < got.size(); ++k) EXPECT_NEAR(got[k], want[i][k], 1e-6 * std::abs(want[i][k]) + 1e-7);
    }
  }
}

// Expert-parallel clipping with the grads on the device (device EP): the same pre-clip norm and the
// same clipped grads as with the same grads on the host, the experts' sum of squares summed over a
// two-rank EP group (the replica doubles it); grads stay on the device. fp32 sums in another order
// than the host's: 1e-6 relative.
TEST_F(OptimDevice, ExpertParallelClippingOfDeviceGrads) {
  std::vector<Tensor> host_dense, host_experts, dev_dense, dev_experts;
  uint64_t seed = 70;
  for (auto [list, dev_list, shape] : {std::tuple{&host_dense, &dev_dense, Shape{13, 7}},
                                       std::tuple{&host_dense, &dev_dense, Shape{29}},
                                       std::tuple{&host_experts, &dev_experts, Shape{2, 5, 11}}}) {
    Tensor h = random_host(shape, seed++).set_requires_grad(true);
    h.set_grad(random_host(shape, seed++, 3.0));
    Tensor d = device_param(h);
    d.set_grad(h.grad().to(Device::cuda));
    list->push_back(h);
    dev_list->push_back(d);
  }
  ReplicaCommunicator ep_host(2, false), ep_dev(2, false);
  const double want = clip_grad_norm_expert_parallel(host_dense, host_experts, ep_host, 1.0);
  const double got = clip_grad_norm_expert_parallel(dev_dense, dev_experts, ep_dev, 1.0);
  ASSERT_GT(want, 1.0) << "the case must clip";
  EXPECT_NEAR(got, want, 1e-6 * want);
  for (size_t i = 0; i < dev_dense.size(); ++i) {
    ASSERT_EQ(dev_dense[i].grad().device(), Device::cuda);
    EXPECT_LE(compare(dev_dense[i].grad(), host_dense[i].grad()).rel(), 1e-6) << "dense " << i;
  }
  ASSERT_EQ(dev_experts[0].grad().device(), Device::cuda);
  EXPECT_LE(compare(dev_experts[0].grad(), host_experts[0].grad()).rel(), 1e-6) << "experts";
}

}  // namespace
}  // namespace moe
