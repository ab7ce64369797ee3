// PyTorch reference test (the llm.c way): moetrain writes a small dense or MoE model's weights, a
// batch, its logits, losses, every gradient, routings and three AdamW-step losses to HDF5;
// tests/torch_reference.py rebuilds the model in torch float32 and must agree to 1e-4 (relative).
#include <gtest/gtest.h>

#include "tests/torch_reference.h"

using namespace moe;
using namespace moe::test;

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

TEST(TorchReference, MoeAuxLossModelMatchesPyTorch) {
  require_torch();
  EXPECT_EQ(run_reference(moe_config(), DType::i64, "moe_aux"), 0) << "see the per-tensor table above";
}

TEST(TorchReference, MoeEveryBlockWithSharedExpertMatchesPyTorch) {
  require_torch();
  ModelConfig cfg = moe_config();
  cfg.tied_embeddings = true;
  cfg.moe.moe_every = 1;  // both blocks MoE
  cfg.moe.num_shared_experts = 1;
  EXPECT_EQ(run_reference(cfg, DType::i32, "moe_shared"), 0) << "see the per-tensor table above";
}

TEST(TorchReference, MoeWithCapacityDropByProbsMatchesPyTorch) {
  require_torch();
  ModelConfig cfg = moe_config();
  cfg.moe.moe_every = 1;
  cfg.moe.capacity_factor = 1.0;  // C = ceil(2 * 33 / 4) = 17 per expert: uneven loads drop
  cfg.moe.drop_policy = "probs";
  EXPECT_EQ(run_reference(cfg, DType::i64, "moe_capacity"), 0) << "see the per-tensor table above";
}

TEST(TorchReference, MoeSigmoidScaledGatesDropByPositionMatchesPyTorch) {
  require_torch();
  ModelConfig cfg = moe_config();
  cfg.moe.moe_every = 1;
  cfg.moe.score_function = "sigmoid";
  cfg.moe.renormalize_gates = false;
  cfg.moe.gate_scale = 2.5;
  cfg.moe.capacity_factor = 0.75;
  cfg.moe.drop_policy = "position";
  EXPECT_EQ(run_reference(cfg, DType::i64, "moe_sigmoid_position"), 0) << "see the per-tensor table above";
}
