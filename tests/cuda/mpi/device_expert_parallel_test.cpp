// Expert parallelism on the cuda device under mpirun -np 2 (the kernels under the emulation,
// build/tests/moetrain_mpi_cuda_emu_tests, ctest mpi_cuda_emu_np2): token rows packed and
// regrouped on the device (Backend::select_rows) and exchanged through the EP communicator (here
// MPI over host copies; NCCL in place where the program links it), LLEP's lent weights likewise.
//
// Layer level, each rank routing its own tokens, three layers of one seed side by side (fp32 rows
// with drops through host staging; bf16 rows with LLEP lending through a group that takes device
// buffers, the NCCL path's in-place exchange):
//   the device EP layer vs the device layer holding all experts (the same kernels): output, input
//   grad and router grads to 1e-5 of the largest entry, expert grads to 1e-5 against the sum over
//   the ranks of the full layer's grads of this rank's experts (only the summation order differs);
//   the device EP layer vs the CPU EP layer: same routing and drops, everything to 1e-2 with fp32
//   activations (the device's experts multiply in bf16), 2e-2 with bf16 activations.
// Training: ep = 2 on the device (fp32 activations, LLEP forced to rebalance) against the
// single-process device run: losses step by step to 1e-5, grad norms to 1e-4, final parameters
// (the checkpoint's experts gathered from the device) to 3e-5 absolute; the device EP checkpoint
// then resumes on the CPU EP run.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <filesystem>

#include "checkpoints/checkpoint.h"
#include "core/autograd.h"
#include "core/cuda/ops/cuda_backend.h"
#include "core/ops.h"
#include "core/rng.h"
#include "layers/moe/balance/topk_routing.h"
#include "layers/moe/moe_layer.h"
#include "parallel/communicator.h"
#include "parallel/process_groups.h"
#include "recipes/recipe.h"
#include "recipes/trainer.h"
#include "tests/cuda/device_test_util.h"
#include "tests/forwarding_communicator.h"
#include "tests/mpi/mpi_train_helpers.h"

namespace fs = std::filesystem;

namespace moe {
namespace {

using test::layer_loss;
using test::max_rel_diff;
using test::random_host;

// vs the full device layer: fp32 rounding; vs the CPU EP layer: test::bf16_experts_rel (the
// experts' bf16 products; measured up to 1.06e-2 in w2's grad with bf16 activations).
constexpr double kF32Rel = 1e-5;

ModelConfig ep_layer_config() {
  ModelConfig c;
  c.d_model = 21;
  c.n_layers = 2;
  c.init_std = 0.3;  // routing far from uniform
  c.moe.num_experts = 4;
  c.moe.top_k = 2;
  c.moe.expert_hidden = 13;
  c.moe.balance.strategy = "none";
  c.moe.z_loss_coef = 0.1;
  return c;
}

struct LayerRun {
  Tensor y, gx;
  std::vector<std::pair<std::string, Tensor>> grads;  // model order
};

// One training forward and backward of sum(y * R) + the extra losses; x [B, S, D] host values.
LayerRun run_layer(MoeLayer& layer, const Tensor& x, const Tensor& R, Device dev, DType act) {
  Tensor leaf = (dev == Device::cuda ? x.to(act).to(Device::cuda) : x.clone()).detach();
  leaf.set_requires_grad(true);
  layer.zero_grad();
  LayerRun out;
  out.y = layer.forward(leaf);
  layer_loss(layer, out.y, R).backward();
  out.gx = leaf.grad();
  for (auto& [n, p] : layer.named_parameters()) out.grads.emplace_back(n, p.grad());
  return out;
}

// Every token to experts 0 and 1 (k = 2), both owned by rank 0: LLEP must lend them.
Routing to_rank_0_experts(const RouterOutput& in) {
  Selection sel;
  for (int64_t t = 0; t < in.scores.size(0); ++t)
    for (int64_t e : {0, 1}) sel.push(t, e, 0.0);
  return build_routing(in.scores, sel, GateOptions{true, 1.0});
}

// The MPI group claiming to take device buffers (as NCCL does): under the emulation device memory
// is host memory, so MPI can move it in place, and the EP exchange's in-place path (no staging
// copies) runs here too.
class InPlaceOverMpi final : public test::ForwardingCommunicator {
 public:
  using ForwardingCommunicator::ForwardingCommunicator;
  std::string backend() const override { return "mpi in place"; }
  bool takes_device_buffers() const override { return true; }
  std::shared_ptr<Communicator> split(int color, int key) override {
    return std::make_shared<InPlaceOverMpi>(inner_->split(color, key));
  }
};

struct EpCase {
  std::string name;
  DType act = DType::f32;
  double capacity = 0;    // > 0: a capacity factor with drops
  bool llep = false;      // route everything to rank 0's experts, LLEP threshold 1
  bool in_place = false;  // the device layer's EP group takes device buffers (InPlaceOverMpi)
};

void expect_device_ep_layer_matches(const EpCase& k) {
  SCOPED_TRACE(k.name);
  auto w = world_communicator();
  ModelConfig c = ep_layer_config();
  ProcessGroups g = make_process_groups(w, w->size(), c.moe.num_experts, true);
  if (k.capacity > 0) {
    c.moe.capacity_factor = k.capacity;
    c.moe.drop_policy = "position";
  }
  const int r = w->rank();
  Philox rng_full(23, 0), rng_ep(23, 0), rng_cpu(23, 0);
  std::shared_ptr<Communicator> dev_group = k.in_place ? std::make_shared<InPlaceOverMpi>(g.ep) : g.ep;
  MoeLayer full(c, 1, rng_full, DType::f32), dev(c, 1, rng_ep, DType::f32, dev_group),
      cpu(c, 1, rng_cpu, DType::f32, g.ep);
  // bf16-exact masters (as tests/cuda/moe_device_test.cpp): the CPU layer sees what the tensor
  // cores see, so the comparison with it measures the device's own rounding.
  for (MoeLayer* m : {&full, &dev, &cpu}) {
    NoGradGuard ng;
    for (Tensor p : m->parameters()) p.copy_(p.to(DType::bf16));
    if (k.llep) {
      m->set_select_override(to_rank_0_experts);
      m->set_llep(LlepConfig{true, 1.0});
    }
  }
  full.to(Device::cuda);
  dev.to(Device::cuda);
  full.set_device_routing(false);  // the host routing of the CPU layer, bit for bit
  dev.set_device_routing(false);
  ASSERT_EQ(dev.experts().num_experts(), c.moe.num_experts / g.layout.ep);

  const Tensor x = random_host({2, 7, c.d_model}, 100 + uint64_t(r)).to(DType::bf16).to(DType::f32);
  const Tensor R = random_host({2, 7, c.d_model}, 200 + uint64_t(r));
  LayerRun a = run_layer(full, x, R, Device::cuda, k.act);
  LayerRun b = run_layer(dev, x, R, Device::cuda, k.act);
  LayerRun h = run_layer(cpu, x, R, Device::cpu, k.act);

  ASSERT_EQ(b.y.device(), Device::cuda);
  EXPECT_EQ(b.y.dtype(), k.act);
  EXPECT_EQ(b.gx.dtype(), k.act);
  EXPECT_EQ(dev.last_routing().expert.to_vector<int64_t>(), cpu.last_routing().expert.to_vector<int64_t>());
  EXPECT_EQ(dev.last_stats().dropped, cpu.last_stats().dropped);
  if (k.capacity > 0) {
    EXPECT_GT(dev.last_stats().dropped, 0) << "the capacity case should drop rows";
  }
  if (k.llep) {
    ASSERT_TRUE(dev.last_ep_plan());
    EXPECT_TRUE(dev.last_ep_plan()->work.rebalanced) << "LLEP should lend rank 0's experts";
    EXPECT_GT(dev.last_ep_plan()->work.moved_rows, 0);
  }

  auto report = [&](const std::string& what, const Tensor& got, const Tensor& same_kernels, const Tensor& cpu_ref) {
    const double e_dev = max_rel_diff(got, same_kernels), e_cpu = max_rel_diff(got, cpu_ref);
    EXPECT_LE(e_dev, kF32Rel) << what << " vs the full device layer, rank " << r;
    EXPECT_LE(e_cpu, test::bf16_experts_rel(k.act)) << what << " vs the CPU EP layer, rank " << r;
    std::printf("[rank %d] %s %s: rel err %.2e vs full device layer, %.2e vs CPU EP layer\n", r, k.name.c_str(),
                what.c_str(), e_dev, e_cpu);
  };
  report("output", b.y, a.y, h.y);
  report("input grad", b.gx, a.gx, h.gx);
  ASSERT_EQ(a.grads.size(), b.grads.size());
  ASSERT_EQ(h.grads.size(), b.grads.size());
  const int64_t El = dev.experts().num_experts(), first = dev.first_expert();
  for (size_t i = 0; i < b.grads.size(); ++i) {
    const std::string& name = b.grads[i].first;
    ASSERT_EQ(name, a.grads[i].first);
    Tensor gf = a.grads[i].second, gd = b.grads[i].second, gh = h.grads[i].second;
    ASSERT_TRUE(gd.defined() && gf.defined() && gh.defined()) << name;
    EXPECT_EQ(gd.device(), Device::cuda) << name;
    if (name.rfind("experts.", 0) == 0) {
      // The full layer's grads of every expert from this rank's tokens, summed over the EP group.
      std::vector<double> sum = gf.to_double_vector();
      g.ep->all_reduce_sum(sum);
      gf = Tensor::from_vector<double>(sum, gf.shape()).slice(0, first, first + El);
    }
    report(name + " grad", gd, gf, gh);
  }
}

TEST(DeviceExpertParallelLayer, Fp32WithDropsMatchesFullLayerAndCpu) {
  cuda::install_backend("DeviceExpertParallelLayer");
  expect_device_ep_layer_matches({"fp32 capacity 0.75", DType::f32, 0.75, false});
}

TEST(DeviceExpertParallelLayer, Bf16WithLlepLendingInPlaceMatchesFullLayerAndCpu) {
  cuda::install_backend("DeviceExpertParallelLayer");
  expect_device_ep_layer_matches({"bf16 llep in place", DType::bf16, 0, true, true});
}

// Emulated, each step of each rank runs every kernel on host threads: one block, 2 steps of one
// micro-batch, one eval batch.
constexpr int64_t kSteps = 2;

TEST(DeviceExpertParallelTraining, ReproducesTheSingleProcessDeviceRunAndResumesOnTheCpu) {
  cuda::install_backend("DeviceExpertParallelTraining");
  auto w = world_communicator();
  ASSERT_EQ(w->size(), 2);
  Recipe single = parse_recipe(test::tiny_recipe(test::corpus_dir(*w), "loss_free"), "device_ep.toml");
  single.train.device = "cuda";
  single.train.cuda_activations = "fp32";  // exact checks; the experts still multiply in bf16
  single.model.n_layers = 1;    // one MoE block: the exchange's wiring, at half the emulated cost
  single.model.init_std = 0.1;  // a peaked router: rank loads uneven enough for LLEP to move rows
  single.train.steps = kSteps;
  single.train.grad_accum = 1;
  single.schedule.warmup_steps = 0;  // the first step moves the parameters at the full rate
  single.eval.every = 0;             // (the last step still evaluates)
  single.eval.batches = 1;
  single.checkpoint.every = 1;
  single.checkpoint.keep = 2;
  Recipe ep = single;
  ep.parallel.ep = 2;
  ep.parallel.llep = true;  // lending changes nothing in the results: threshold 1 makes it move rows
  ep.parallel.llep_threshold = 1.0;
  const fs::path base = test::runs_dir(*w), ref = base / "device_ep_single", par = base / "device_ep2";
  using Clock = std::chrono::steady_clock;
  auto seconds_since = [](Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); };
  const Clock::time_point t0 = Clock::now();
  test::PairedRuns rc = test::train_reference_then_parallel(single, ep, ref, par, w);
  std::printf("[rank %d] single-process device run + ep = 2 device run: %.1f s\n", w->rank(), seconds_since(t0));
  ASSERT_EQ(rc.par_rc, kTrainOk);
  if (w->rank() == 0) {
    ASSERT_EQ(rc.ref_rc, kTrainOk);
    EXPECT_EQ(test::expect_device_runs_match(ref, par, kSteps).meta.ep_size, 2);  // experts gathered from the device
    double moved = 0;
    for (double m : test::metric(par, "train", "llep_moved_rows")) moved += m;
    EXPECT_GT(moved, 0) << "LLEP never lent an expert";
  }
  // The device EP checkpoint of step 1 resumes on the CPU EP run: its step 2 loss is the device's
  // to 1e-3 (the device's experts multiply in bf16; measured 3e-6).
  Recipe cpu = ep;
  cpu.train.device = "cpu";
  const fs::path resumed = base / "device_ep2_cpu_resume";
  if (w->rank() == 0) fs::remove_all(resumed);
  w->barrier();
  const Clock::time_point t1 = Clock::now();
  ASSERT_EQ(test::train(cpu, resumed, w, checkpoint_dir(par, 1).string()), kTrainOk);
  std::printf("[rank %d] the CPU EP run resumed for one step: %.1f s\n", w->rank(), seconds_since(t1));
  if (w->rank() == 0) {
    const std::vector<double> dev_loss = test::metric(par, "train", "loss"), cpu_loss = test::metric(resumed, "train", "loss");
    ASSERT_EQ(cpu_loss.size(), 1u);
    test::expect_rel(cpu_loss[0], dev_loss.back(), 1e-3, "step 2 loss after resuming on the CPU");
  }
}

}  // namespace
}  // namespace moe
