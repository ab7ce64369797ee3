// The PyTorch reference test with moetrain's model on the cuda device (the emulation here, the GPU
// in the GPU binary): the device ops are checked against an independent implementation, not only
// against moetrain's own CPU ops. fp32 activations match to 1e-4 except where bf16 enters (the
// MoE experts multiply bf16 on tensor cores); bf16 activations to bf16 tolerance. Worst relative
// errors measured under the emulation: dense fp32 9.7e-7, dense bf16 2.2e-2 (an attention weight
// grad; the 5e-2 bound leaves room for cuBLAS's different summation order on a GPU), MoE with
// fp32 activations 9.7e-3 (an expert weight grad).
#include <gtest/gtest.h>

#include "core/cuda/ops/cuda_backend.h"
#include "tests/torch_reference.h"

namespace moe {
namespace {

class TorchReferenceDevice : public ::testing::Test {
 protected:
  void SetUp() override {
#ifndef MOE_CUDA_EMULATION
    // A GPU machine may lack torch; CI (the emulation) must not: there require_torch fails.
    if (std::system((std::string(test::kPython) + " -c 'import torch, h5py' >/dev/null 2>&1").c_str()) != 0)
      GTEST_SKIP() << "no torch on this GPU machine";
#endif
    cuda::install_backend("TorchReferenceDevice");
  }
  void TearDown() override { cuda_backend("TorchReferenceDevice").set_activation_dtype(DType::bf16); }

  int run(const ModelConfig& cfg, DType activations, double tol, const std::string& tag) {
    test::require_torch();
    cuda_backend("TorchReferenceDevice").set_activation_dtype(activations);
    return test::run_reference(cfg, DType::i64, tag, test::ReferenceRun{Device::cuda, tol});
  }
};

TEST_F(TorchReferenceDevice, DenseFp32ActivationsMatchTo1e4) {
  ModelConfig cfg = test::small_config();
  cfg.d_ff = 100;
  EXPECT_EQ(run(cfg, DType::f32, 1e-4, "device_dense_fp32"), 0) << "see the per-tensor table above";
}

TEST_F(TorchReferenceDevice, DenseBf16ActivationsMatchToBf16Tolerance) {
  ModelConfig cfg = test::small_config();
  cfg.tied_embeddings = true;
  EXPECT_EQ(run(cfg, DType::bf16, 5e-2, "device_dense_bf16"), 0) << "see the per-tensor table above";
}

TEST_F(TorchReferenceDevice, MoeAuxLossFp32ActivationsBf16ExpertsMatch) {
  EXPECT_EQ(run(test::moe_config(), DType::f32, 2e-2, "device_moe_aux"), 0) << "see the per-tensor table above";
}

}  // namespace
}  // namespace moe
