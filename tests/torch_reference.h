// The PyTorch reference run shared by tests/torch_reference_test.cpp (CPU) and
// tests/cuda/torch_reference_device_test.cpp (the model on the cuda device): moetrain writes a
// small model's weights, a batch, its logits, losses, grads, routings and three AdamW-step losses
// to an HDF5 case file, and tests/torch_reference.py rebuilds the model in torch float32 and
// compares. The tolerance is written into the case file (config attribute `tolerance`) and the
// script reads it from there, so a case checked later (scripts/torch_reference_offline.sh, for
// files written on a GPU machine without torch) is held to the same bound as the test's.
#pragma once
#include <gtest/gtest.h>
#include <hdf5.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include "core/ops.h"
#include "core/rng.h"
#include "layers/moe/moe_layer.h"
#include "layers/transformer.h"
#include "optim/adamw.h"

namespace moe::test {


inline constexpr const char* kPython = "/usr/bin/python3";

// The interpreter that runs tests/torch_reference.py: kPython, or MOE_TORCH_REFERENCE_PYTHON
// (a path that does not exist hides torch, which is how the offline path is tested here).
inline std::string python() {
  const char* p = std::getenv("MOE_TORCH_REFERENCE_PYTHON");
  return p != nullptr && *p != '\0' ? std::string(p) : std::string(kPython);
}

inline bool have_torch() { return std::system((python() + " -c 'import torch, h5py' >/dev/null 2>&1").c_str()) == 0; }

// Thin RAII over the HDF5 C API: only what this test writes (datasets of f32 / f64 / i64 / i8,
// groups, scalar attributes).
class H5Writer {
 public:
  explicit H5Writer(const std::string& path) {
    file_ = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    MOE_CHECK(file_ >= 0, "torch_reference_test", "cannot create HDF5 file ", path);
  }
  ~H5Writer() {
    for (hid_t g : groups_) H5Gclose(g);
    if (file_ >= 0) H5Fclose(file_);
  }
  hid_t root() const { return file_; }
  hid_t group(const std::string& name) {
    hid_t g = H5Gcreate2(file_, name.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    MOE_CHECK(g >= 0, "torch_reference_test", "cannot create group ", name);
    groups_.push_back(g);
    return g;
  }
  static void dataset(hid_t loc, const std::string& name, const Tensor& t) {
    Tensor c = t.to(Device::cpu);  // device tensors (grads, logits) are written from a host copy
    if (c.dtype() == DType::bf16) c = c.to(DType::f32);
    c = c.contiguous();
    hid_t type;
    switch (c.dtype()) {
      case DType::f32: type = H5T_NATIVE_FLOAT; break;
      case DType::f64: type = H5T_NATIVE_DOUBLE; break;
      case DType::i64: type = H5T_NATIVE_INT64; break;
      case DType::i32: type = H5T_NATIVE_INT32; break;
      default: MOE_FAIL("torch_reference_test", "cannot write dtype ", dtype_name(c.dtype()));
    }
    std::vector<hsize_t> dims(c.shape().begin(), c.shape().end());
    hid_t space = dims.empty() ? H5Screate(H5S_SCALAR) : H5Screate_simple(int(dims.size()), dims.data(), nullptr);
    hid_t d = H5Dcreate2(loc, name.c_str(), type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    MOE_CHECK(d >= 0, "torch_reference_test", "cannot create dataset ", name);
    herr_t st = H5Dwrite(d, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, c.raw_data());
    H5Dclose(d);
    H5Sclose(space);
    MOE_CHECK(st >= 0, "torch_reference_test", "cannot write dataset ", name);
  }
  static void strings(hid_t loc, const std::string& name, const std::vector<std::string>& values) {
    size_t width = 1;
    for (auto& s : values) width = std::max(width, s.size());
    std::vector<char> buf(width * values.size(), '\0');
    for (size_t i = 0; i < values.size(); ++i) values[i].copy(buf.data() + i * width, values[i].size());
    hid_t type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, width);
    H5Tset_strpad(type, H5T_STR_NULLPAD);
    hsize_t n = values.size();
    hid_t space = H5Screate_simple(1, &n, nullptr);
    hid_t d = H5Dcreate2(loc, name.c_str(), type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    MOE_CHECK(d >= 0, "torch_reference_test", "cannot create dataset ", name);
    herr_t st = H5Dwrite(d, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf.data());
    H5Dclose(d);
    H5Sclose(space);
    H5Tclose(type);
    MOE_CHECK(st >= 0, "torch_reference_test", "cannot write dataset ", name);
  }
  static void attr(hid_t loc, const std::string& name, double value) {
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(loc, name.c_str(), H5T_NATIVE_DOUBLE, space, H5P_DEFAULT, H5P_DEFAULT);
    MOE_CHECK(a >= 0, "torch_reference_test", "cannot create attribute ", name);
    herr_t st = H5Awrite(a, H5T_NATIVE_DOUBLE, &value);
    H5Aclose(a);
    H5Sclose(space);
    MOE_CHECK(st >= 0, "torch_reference_test", "cannot write attribute ", name);
  }

 private:
  hid_t file_ = -1;
  std::vector<hid_t> groups_;
};

// Where moetrain runs the model, and the script's tolerance (relative; 1e-4 for fp32 on the CPU).
struct ReferenceRun {
  Device device = Device::cpu;
  double tol = 1e-4;
};

// Runs the model and writes the case file `path` (no torch needed).
inline void write_reference_case(const ModelConfig& cfg, DType id_dtype, const std::string& path, ReferenceRun run) {
  const int64_t B = 3, S = 11, kSteps = 3;
  const AdamWConfig adam{0.9, 0.95, 1e-8, 0.1};
  const double lr = 1e-2;
  // MoE layers as the trainer builds them (recipes/trainer.cpp build_model): their own init
  // stream, strategy from cfg.moe through make_balancer.
  Philox moe_init(1234, stream_id(RngStream::init, 0, 1));
  std::vector<MoeLayer*> moe_layers;
  FfnFactory factory = [&](int layer) -> std::shared_ptr<FeedForward> {
    if (!cfg.use_moe || !is_moe_layer(cfg.moe, layer)) return nullptr;
    auto m = std::make_shared<MoeLayer>(cfg, layer, moe_init);
    moe_layers.push_back(m.get());
    return m;
  };
  TransformerLM model(cfg, /*seed=*/1234, factory);
  MOE_CHECK(!cfg.use_moe || !moe_layers.empty(), "torch_reference_test", "MoE config built no MoE layer");
  model.to(run.device);

  // A batch with a few ignored targets, so the ignore_index path is compared too.
  Philox rng(77, stream_id(RngStream::test));
  std::vector<int64_t> ids(B * S), targets(B * S);
  for (auto& v : ids) v = int64_t(rng.below(uint64_t(cfg.vocab_size)));
  for (auto& v : targets) v = int64_t(rng.below(uint64_t(cfg.vocab_size)));
  targets[3] = targets[S + 7] = targets[2 * S + 10] = kIgnoreIndex;
  Tensor tids = Tensor::from_vector<int64_t>(ids, {B, S}).to(id_dtype).to(run.device);
  Tensor ttargets = Tensor::from_vector<int64_t>(targets, {B, S}).to(id_dtype).to(run.device);

  {
    H5Writer w(path);
    hid_t c = w.group("config");
    H5Writer::attr(c, "tolerance", run.tol);
    H5Writer::attr(c, "vocab_size", double(cfg.vocab_size));
    H5Writer::attr(c, "d_model", double(cfg.d_model));
    H5Writer::attr(c, "n_layers", double(cfg.n_layers));
    H5Writer::attr(c, "n_heads", double(cfg.n_heads));
    H5Writer::attr(c, "rope_theta", cfg.rope_theta);
    H5Writer::attr(c, "norm_eps", cfg.norm_eps);
    H5Writer::attr(c, "tied", cfg.tied_embeddings ? 1.0 : 0.0);
    H5Writer::attr(c, "lr", lr);
    H5Writer::attr(c, "beta1", adam.beta1);
    H5Writer::attr(c, "beta2", adam.beta2);
    H5Writer::attr(c, "eps", adam.eps);
    H5Writer::attr(c, "weight_decay", adam.weight_decay);
    H5Writer::attr(c, "adamw_steps", double(kSteps));
    H5Writer::attr(c, "moe", cfg.use_moe ? 1.0 : 0.0);
    if (cfg.use_moe) {
      const MoeConfig& m = cfg.moe;
      MOE_CHECK(m.balance.strategy == "aux_loss" && m.balance.aux_variant == "micro_batch" && m.jitter == 0,
                "torch_reference_test", "the torch reference implements aux_loss (micro_batch) without jitter only");
      H5Writer::attr(c, "num_experts", double(m.num_experts));
      H5Writer::attr(c, "top_k", double(m.top_k));
      H5Writer::attr(c, "moe_every", double(m.moe_every));
      H5Writer::attr(c, "num_shared_experts", double(m.num_shared_experts));
      H5Writer::attr(c, "sigmoid", m.score_function == "sigmoid" ? 1.0 : 0.0);
      H5Writer::attr(c, "renormalize_gates", m.renormalize_gates ? 1.0 : 0.0);
      H5Writer::attr(c, "gate_scale", m.gate_scale);
      H5Writer::attr(c, "z_loss_coef", m.z_loss_coef);
      H5Writer::attr(c, "aux_alpha", m.balance.aux_alpha);
      H5Writer::attr(c, "capacity_factor", m.capacity_factor ? *m.capacity_factor : 0.0);  // 0: dropless
      H5Writer::attr(c, "drop_by_position", m.drop_policy == "position" ? 1.0 : 0.0);
    }

    auto named = model.named_parameters();
    std::vector<std::string> names;
    hid_t gw = w.group("weights");
    for (auto& [n, p] : named) {
      names.push_back(n);
      H5Writer::dataset(gw, n, p);
    }
    H5Writer::strings(w.root(), "param_names", names);
    H5Writer::dataset(w.root(), "ids", tids.to(DType::i64));
    H5Writer::dataset(w.root(), "targets", ttargets.to(DType::i64));

    clear_tape();
    model.zero_grad();
    Tensor logits = model.forward(tids);
    H5Writer::dataset(w.root(), "logits", logits.detach());
    clear_tape();
    LossOutput out = model.loss(tids, ttargets);
    H5Writer::dataset(w.root(), "loss", out.total.detach());
    H5Writer::dataset(w.root(), "lm_loss", out.lm.detach());
    // Every extra term, scaled and unscaled, as "layer<l>.<name>" (the trainer's log keys).
    hid_t ge = w.group("extra");
    hid_t geu = w.group("extra_unscaled");
    std::vector<std::string> extra_names;
    for (auto& [l, e] : out.extra) {
      std::string key = "layer" + std::to_string(l) + "." + e.name;
      extra_names.push_back(key);
      H5Writer::dataset(ge, key, e.scaled.detach().reshape({}));
      H5Writer::dataset(geu, key, Tensor::full({}, e.unscaled, DType::f64));
    }
    if (!extra_names.empty()) H5Writer::strings(w.root(), "extra_names", extra_names);
    // The routing of every forward the script redoes (pass 0: this one; pass s: after step s),
    // so a routing difference is reported as such rather than as a loss mismatch.
    hid_t gr = w.group("routing");
    auto write_routing = [&](int64_t pass) {
      for (MoeLayer* m : moe_layers) {
        std::string key = "pass" + std::to_string(pass) + ".layer" + std::to_string(m->layer_index());
        H5Writer::dataset(gr, key + ".expert", m->last_routing().expert.to(DType::i64));
        H5Writer::dataset(gr, key + ".dropped", Tensor::full({}, double(m->last_stats().dropped), DType::i64));
        // Which assignments survived capacity: the layer does not keep its CapacityResult, so it
        // is recomputed from the routing with the layer's own function (deterministic).
        const Routing& r = m->last_routing();
        CapacityResult cap = apply_capacity(r, B * S, cfg.moe.top_k, cfg.moe.num_experts, cfg.moe.capacity_factor,
                                            parse_drop_policy(cfg.moe.drop_policy));
        std::vector<int32_t> kept(size_t(r.expert.numel()), 0);
        for (int64_t a : cap.kept) kept[size_t(a)] = 1;
        H5Writer::dataset(gr, key + ".kept", Tensor::from_vector<int32_t>(kept, {int64_t(kept.size())}));
      }
    };
    write_routing(0);
    out.total.backward();
    hid_t gg = w.group("grads");
    for (auto& [n, p] : named) {
      MOE_CHECK(p.grad().defined(), "torch_reference_test", "parameter ", n, " got no grad");
      H5Writer::dataset(gg, n, p.grad());
    }

    AdamW opt(named, adam);
    hid_t gd = w.group("decays");
    for (auto& [n, p] : named) H5Writer::dataset(gd, n, Tensor::full({}, opt.decays(n) ? 1 : 0, DType::i32));
    std::vector<float> step_losses;
    for (int64_t s = 0; s < kSteps; ++s) {
      opt.step(lr);
      for (MoeLayer* m : moe_layers) m->balancer().update(m->take_pending_loads());  // as the trainer
      opt.zero_grad();
      LossOutput o = model.loss(tids, ttargets);
      write_routing(s + 1);
      step_losses.push_back(o.total.item<float>());
      o.total.backward();
    }
    H5Writer::dataset(w.root(), "adamw_losses", Tensor::from_vector<float>(step_losses, {kSteps}));
    hid_t gf = w.group("final");
    for (auto& [n, p] : named) H5Writer::dataset(gf, n, p.detach());
  }
}

// Writes the case to a temp dir and returns the reference script's exit status (0: every
// comparison within the tolerance the file carries); the file is kept when it fails.
inline int run_reference(const ModelConfig& cfg, DType id_dtype, const std::string& tag, ReferenceRun run = {}) {
  char dir_template[] = "/tmp/moe_torch_ref_XXXXXX";
  const char* dir = mkdtemp(dir_template);
  MOE_CHECK(dir != nullptr, "torch_reference_test", "cannot create a temp dir");
  const std::string path = std::string(dir) + "/" + tag + ".h5";
  write_reference_case(cfg, id_dtype, path, run);
  const std::string cmd = python() + " " + MOE_SOURCE_DIR + "/tests/torch_reference.py " + path;
  int status = std::system(cmd.c_str());
  int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  if (code == 0) std::filesystem::remove_all(dir);
  else std::cerr << "torch_reference_test: kept " << path << " for inspection\n";
  return code;
}

// Missing torch must fail the suite, not skip: CI would otherwise pass without the reference.
inline void require_torch() {
  ASSERT_TRUE(have_torch()) << python()
                            << " cannot import torch and h5py: run scripts/setup.sh (installs python3-torch, python3-h5py)";
}

inline ModelConfig small_config() {
  ModelConfig cfg;
  cfg.vocab_size = 67;
  cfg.d_model = 48;
  cfg.n_layers = 2;
  cfg.n_heads = 4;
  cfg.max_seq_len = 16;
  cfg.init_std = 0.1;  // larger than training's 0.02 so attention is far from uniform
  return cfg;
}

// aux_loss (micro_batch), softmax, top-2 of 4 renormalized, z-loss on: the fixed case.
inline ModelConfig moe_config() {
  ModelConfig cfg = small_config();
  cfg.d_ff = 100;
  cfg.use_moe = true;
  cfg.moe.num_experts = 4;
  cfg.moe.top_k = 2;
  cfg.moe.expert_hidden = 36;  // not a multiple of 8
  cfg.moe.moe_every = 2;       // block 0 dense, block 1 MoE
  cfg.moe.score_function = "softmax";
  cfg.moe.renormalize_gates = true;
  cfg.moe.z_loss_coef = 1e-3;
  cfg.moe.balance.strategy = "aux_loss";
  cfg.moe.balance.aux_variant = "micro_batch";
  cfg.moe.balance.aux_alpha = 1e-2;
  return cfg;
}

}  // namespace moe::test
