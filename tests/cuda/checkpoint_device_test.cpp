// Checkpoints of a model and optimizer on the cuda device: written from the device (tensors
// copied to the host while writing), loaded into a CPU model and optimizer, and the reverse,
// with the trainer's key layout (model/<name>, optim/exp_avg|exp_avg_sq|step/<name>).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <string>

#include "checkpoints/checkpoint.h"
#include "core/cuda/ops/cuda_backend.h"
#include "core/device.h"
#include "core/rng.h"
#include "layers/moe/moe_layer.h"
#include "layers/transformer.h"
#include "optim/adamw.h"
#include "tests/cuda/device_test_util.h"

namespace moe {
namespace {

namespace fs = std::filesystem;

struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& tag) {
    path = fs::temp_directory_path() / ("moe_ckpt_device_" + tag + "_" + std::to_string(::getpid()));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

class CheckpointDevice : public ::testing::Test {
 protected:
  void SetUp() override {
    cuda::install_backend("CheckpointDevice");
    cuda_backend("CheckpointDevice").set_activation_dtype(DType::f32);
  }
};

// A small MoE LM: layer 0 dense, layer 1 MoE (3 experts, top-2, expert hidden 8).
std::unique_ptr<TransformerLM> make_model(uint64_t seed) {
  ModelConfig cfg;
  cfg.vocab_size = 19;
  cfg.d_model = 16;
  cfg.n_layers = 2;
  cfg.n_heads = 2;
  cfg.d_ff = 24;
  cfg.max_seq_len = 32;
  cfg.use_moe = true;
  cfg.moe.num_experts = 3;
  cfg.moe.top_k = 2;
  cfg.moe.expert_hidden = 8;
  cfg.moe.moe_every = 2;
  auto init = std::make_shared<Philox>(seed, 7);
  FfnFactory factory = [cfg, init](int layer) -> std::shared_ptr<FeedForward> {
    if (!is_moe_layer(cfg.moe, layer)) return nullptr;
    return std::make_shared<MoeLayer>(cfg, layer, *init);
  };
  return std::make_unique<TransformerLM>(cfg, seed, factory);
}

using test::random_host;

// Grads that depend on (seed, parameter index), on the parameter's device.
void set_grads(const TransformerLM& m, uint64_t seed) {
  uint64_t i = 0;
  for (auto& [name, p] : m.named_parameters()) {
    Tensor g = random_host(p.shape(), seed * 1000 + i++);
    Tensor handle = p;
    handle.set_grad(g.to(p.device()));
  }
}

// What the trainer's make_checkpoint writes for the model and the optimizer.
Checkpoint model_checkpoint(const TransformerLM& m, const AdamW& opt, int64_t step) {
  Checkpoint c;
  c.meta.step = step;
  c.meta.recipe = "[train]\n";
  for (auto& [name, p] : m.named_parameters()) c.tensors["model/" + name] = p;  // on its device
  for (auto& [name, t] : opt.exp_avg()) c.tensors["optim/exp_avg/" + name] = t;
  for (auto& [name, t] : opt.exp_avg_sq()) c.tensors["optim/exp_avg_sq/" + name] = t;
  for (auto& [name, t] : opt.steps()) c.tensors["optim/step/" + name] = t;
  return c;
}

// What the trainer's resume_from does with them: copy into the existing parameters, load the
// optimizer state.
void load_model_checkpoint(const Checkpoint& c, const TransformerLM& m, AdamW& opt) {
  std::map<std::string, Tensor> ma, va, sa;
  for (auto& [name, p] : m.named_parameters()) {
    Tensor handle = p;
    handle.copy_(c.tensor("model/" + name));
    ma[name] = c.tensor("optim/exp_avg/" + name);
    va[name] = c.tensor("optim/exp_avg_sq/" + name);
    sa[name] = c.tensor("optim/step/" + name);
  }
  opt.load_state(ma, va, sa);
}

bool same_bits(const Tensor& a, const Tensor& b) {
  if (a.dtype() != b.dtype() || a.shape() != b.shape()) return false;
  Tensor ca = a.device() == Device::cpu ? a.contiguous() : a.detach().to(Device::cpu);
  Tensor cb = b.device() == Device::cpu ? b.contiguous() : b.detach().to(Device::cpu);
  return std::memcmp(ca.raw_data(), cb.raw_data(), size_t(a.numel()) * dtype_size(a.dtype())) == 0;
}

// Every parameter, moment and step count of (ma, oa) bit-equal to (mb, ob).
void expect_same_state(const TransformerLM& ma, const AdamW& oa, const TransformerLM& mb, const AdamW& ob) {
  auto pa = ma.named_parameters(), pb = mb.named_parameters();
  ASSERT_EQ(pa.size(), pb.size());
  const auto a_m = oa.exp_avg(), a_v = oa.exp_avg_sq(), a_s = oa.steps();
  const auto b_m = ob.exp_avg(), b_v = ob.exp_avg_sq(), b_s = ob.steps();
  for (size_t i = 0; i < pa.size(); ++i) {
    const std::string& name = pa[i].first;
    ASSERT_EQ(name, pb[i].first);
    EXPECT_TRUE(same_bits(pa[i].second, pb[i].second)) << "parameter " << name;
    EXPECT_TRUE(same_bits(a_m.at(name), b_m.at(name))) << "exp_avg " << name;
    EXPECT_TRUE(same_bits(a_v.at(name), b_v.at(name))) << "exp_avg_sq " << name;
    EXPECT_EQ(a_s.at(name).item_double(), b_s.at(name).item_double()) << "step " << name;
  }
}

// After one more identical step on both: within 1e-6 of each tensor's largest entry (the
// device update is the CPU's formula; bit-exact under the emulation, ~1 ulp on a GPU).
void expect_next_step_matches(const TransformerLM& dev, AdamW& od, const TransformerLM& cpu, AdamW& oc) {
  set_grads(dev, 77);
  set_grads(cpu, 77);
  od.step(2e-3);
  oc.step(2e-3);
  auto pd = dev.named_parameters(), pc = cpu.named_parameters();
  for (size_t i = 0; i < pd.size(); ++i) {
    ASSERT_EQ(pd[i].second.device(), Device::cuda);
    const std::vector<float> d = pd[i].second.to(Device::cpu).to_vector<float>(), c = pc[i].second.to_vector<float>();
    double worst = 0, ref = 0;
    for (size_t j = 0; j < d.size(); ++j) {
      worst = std::max(worst, std::abs(double(d[j]) - double(c[j])));
      ref = std::max(ref, std::abs(double(c[j])));
    }
    EXPECT_LE(worst, 1e-6 * ref) << pd[i].first;
  }
}

TEST_F(CheckpointDevice, DeviceSaveLoadsIntoCpuModelAndOptimizer) {
  TempDir tmp("d2h");
  auto dev = make_model(1);
  dev->to(Device::cuda);
  ASSERT_EQ(dev->device(), Device::cuda);
  AdamW od(dev->named_parameters(), AdamWConfig{0.9, 0.95, 1e-8, 0.1});
  set_grads(*dev, 5);
  od.step(3e-3);
  fs::path dir = write_checkpoint(tmp.path, 1, model_checkpoint(*dev, od, 1), 0);
  const Checkpoint r = read_checkpoint(dir);
  for (auto& [key, t] : r.tensors) EXPECT_EQ(t.device(), Device::cpu) << key;

  auto cpu = make_model(2);  // other initial weights: everything must come from the file
  AdamW oc(cpu->named_parameters(), AdamWConfig{0.9, 0.95, 1e-8, 0.1});
  load_model_checkpoint(r, *cpu, oc);
  ASSERT_EQ(cpu->device(), Device::cpu);
  expect_same_state(*dev, od, *cpu, oc);

  // Same format: the CPU's own checkpoint of that state holds the same datasets, bit for bit.
  TempDir tmp2("d2h_again");
  const Checkpoint again = read_checkpoint(write_checkpoint(tmp2.path, 1, model_checkpoint(*cpu, oc, 1), 0));
  ASSERT_EQ(again.tensors.size(), r.tensors.size());
  for (auto& [key, t] : r.tensors) EXPECT_TRUE(same_bits(again.tensor(key), t)) << key;

  expect_next_step_matches(*dev, od, *cpu, oc);
}

TEST_F(CheckpointDevice, CpuSaveLoadsIntoDeviceModelAndOptimizer) {
  TempDir tmp("h2d");
  auto cpu = make_model(3);
  AdamW oc(cpu->named_parameters(), AdamWConfig{0.9, 0.95, 1e-8, 0.1});
  set_grads(*cpu, 6);
  oc.step(4e-3);
  set_grads(*cpu, 8);
  oc.step(1e-3);
  fs::path dir = write_checkpoint(tmp.path, 2, model_checkpoint(*cpu, oc, 2), 0);
  const Checkpoint r = read_checkpoint(dir);

  auto dev = make_model(4);
  dev->to(Device::cuda);
  AdamW od(dev->named_parameters(), AdamWConfig{0.9, 0.95, 1e-8, 0.1});
  load_model_checkpoint(r, *dev, od);
  ASSERT_EQ(dev->device(), Device::cuda);
  for (auto& [name, p] : dev->named_parameters()) ASSERT_EQ(p.device(), Device::cuda) << name;
  expect_same_state(*cpu, oc, *dev, od);
  expect_next_step_matches(*dev, od, *cpu, oc);
}

}  // namespace
}  // namespace moe
