// PyTorch reference test (the llm.c way): moetrain writes a small dense model's weights, a
// batch, its logits, loss, every gradient and three AdamW-step losses to HDF5; tests/
// torch_reference.py rebuilds the model in torch float32 and must agree to 1e-4 (relative).
#include <gtest/gtest.h>
#include <hdf5.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <filesystem>
#include <string>
#include <vector>

#include "core/ops.h"
#include "core/rng.h"
#include "layers/transformer.h"
#include "optim/adamw.h"

using namespace moe;

namespace {

constexpr const char* kPython = "/usr/bin/python3";

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
    Tensor c = t.contiguous();
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

// Returns the reference script's exit status (0: every comparison within tolerance).
int run_reference(const ModelConfig& cfg, DType id_dtype, const std::string& tag) {
  const int64_t B = 3, S = 11, kSteps = 3;
  const AdamWConfig adam{0.9, 0.95, 1e-8, 0.1};
  const double lr = 1e-2;
  TransformerLM model(cfg, /*seed=*/1234);

  // A batch with a few ignored targets, so the ignore_index path is compared too.
  Philox rng(77, stream_id(RngStream::test));
  std::vector<int64_t> ids(B * S), targets(B * S);
  for (auto& v : ids) v = int64_t(rng.below(uint64_t(cfg.vocab_size)));
  for (auto& v : targets) v = int64_t(rng.below(uint64_t(cfg.vocab_size)));
  targets[3] = targets[S + 7] = targets[2 * S + 10] = kIgnoreIndex;
  Tensor tids = Tensor::from_vector<int64_t>(ids, {B, S}).to(id_dtype);
  Tensor ttargets = Tensor::from_vector<int64_t>(targets, {B, S}).to(id_dtype);

  char dir_template[] = "/tmp/moe_torch_ref_XXXXXX";
  const char* dir = mkdtemp(dir_template);
  MOE_CHECK(dir != nullptr, "torch_reference_test", "cannot create a temp dir");
  const std::string path = std::string(dir) + "/" + tag + ".h5";
  {
    H5Writer w(path);
    hid_t c = w.group("config");
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
      opt.zero_grad();
      LossOutput o = model.loss(tids, ttargets);
      step_losses.push_back(o.total.item<float>());
      o.total.backward();
    }
    H5Writer::dataset(w.root(), "adamw_losses", Tensor::from_vector<float>(step_losses, {kSteps}));
    hid_t gf = w.group("final");
    for (auto& [n, p] : named) H5Writer::dataset(gf, n, p.detach());
  }
  const std::string cmd = std::string(kPython) + " " + MOE_SOURCE_DIR + "/tests/torch_reference.py " + path;
  int status = std::system(cmd.c_str());
  int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  if (code == 0) std::filesystem::remove_all(dir);
  else std::cerr << "torch_reference_test: kept " << path << " for inspection\n";
  return code;
}

// Missing torch must fail the suite, not skip: CI would otherwise pass without the reference.
void require_torch() {
  const std::string cmd = std::string(kPython) + " -c 'import torch, h5py' >/dev/null 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0)
      << kPython << " cannot import torch and h5py: run scripts/setup.sh (installs python3-torch, python3-h5py)";
}

ModelConfig small_config() {
  ModelConfig cfg;
  cfg.vocab_size = 67;
  cfg.d_model = 48;
  cfg.n_layers = 2;
  cfg.n_heads = 4;
  cfg.max_seq_len = 16;
  cfg.init_std = 0.1;  // larger than training's 0.02 so attention is far from uniform
  return cfg;
}

}  // namespace

TEST(TorchReference, UntiedModelMatchesPyTorch) {
  require_torch();
  ModelConfig cfg = small_config();
  cfg.d_ff = 100;  // explicit, not a multiple of 8
  EXPECT_EQ(run_reference(cfg, DType::i64, "untied"), 0) << "see the per-tensor table above";
}

TEST(TorchReference, TiedModelMatchesPyTorch) {
  require_torch();
  ModelConfig cfg = small_config();
  cfg.tied_embeddings = true;  // d_ff = 0: 8/3 * 48 = 128
  EXPECT_EQ(run_reference(cfg, DType::i32, "tied"), 0) << "see the per-tensor table above";
}
