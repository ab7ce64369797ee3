// Integration: a 2-layer dense model memorizes a fixed batch of real English text (the opening
// of the US Declaration of Independence, public domain), byte-level, with AdamW + warmup/cosine.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <string>

#include "core/ops.h"
#include "layers/transformer.h"
#include "optim/adamw.h"
#include "optim/clip.h"
#include "optim/schedule.h"

using namespace moe;

namespace {

const char* kText =
    "When in the Course of human events, it becomes necessary for one people to dissolve the political bands "
    "which have connected them with another, and to assume among the powers of the earth, the separate and "
    "equal station to which the Laws of Nature and of Nature's God entitle them, a decent respect to the "
    "opinions of mankind requires that they should declare the causes which impel them to the separation.\n"
    "We hold these truths to be self-evident, that all men are created equal, that they are endowed by their "
    "Creator with certain unalienable Rights, that among these are Life, Liberty and the pursuit of Happiness.";

}  // namespace

TEST(TrainDense, MemorizesDeclarationOfIndependence) {
  const std::string text(kText);
  const int64_t S = 64, B = int64_t(text.size() - 1) / S;  // 9 sequences of 64 next-byte targets
  ASSERT_GE(B, 8);
  std::vector<int64_t> ids(B * S), targets(B * S);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = 0; s < S; ++s) {
      ids[b * S + s] = static_cast<unsigned char>(text[b * S + s]);
      targets[b * S + s] = static_cast<unsigned char>(text[b * S + s + 1]);
    }
  Tensor tids = Tensor::from_vector<int64_t>(ids, {B, S}), ttargets = Tensor::from_vector<int64_t>(targets, {B, S});

  ModelConfig cfg;
  cfg.vocab_size = 256;
  cfg.d_model = 64;
  cfg.n_layers = 2;
  cfg.n_heads = 4;
  cfg.max_seq_len = S;
  TransformerLM model(cfg, 42);
  AdamW opt(model.named_parameters(), AdamWConfig{0.9, 0.95, 1e-8, 0.1});
  const int64_t kSteps = 120;
  const LrScheduleConfig sched{LrScheduleKind::cosine, 1e-2, 1e-3, 10, kSteps, 0, DecayShape::linear};

  double first = 0, last = 0;
  for (int64_t step = 0; step < kSteps; ++step) {
    opt.zero_grad();
    LossOutput out = model.loss(tids, ttargets);
    last = out.total.item<float>();
    if (step == 0) first = last;
    if (step % 25 == 0 || step == kSteps - 1) std::cout << "step " << step << " loss " << last << "\n";
    ASSERT_TRUE(std::isfinite(last)) << "step " << step;
    out.total.backward();
    clip_grad_norm(model.parameters(), 1.0);
    opt.step(lr_at(sched, step));
  }
  // Uniform over 256 bytes is ln 256 = 5.55; small init keeps the first loss near it.
  EXPECT_NEAR(first, std::log(256.0), 0.1);
  EXPECT_LT(last, 0.2) << "loss went from " << first << " to " << last << " in " << kSteps << " steps";

  // Memorized: greedy next-byte predictions reproduce the text.
  NoGradGuard ng;
  std::vector<float> logits = model.forward(tids).to_vector<float>();
  int64_t correct = 0;
  for (int64_t i = 0; i < B * S; ++i) {
    const float* row = logits.data() + i * 256;
    correct += std::max_element(row, row + 256) - row == targets[i];
  }
  EXPECT_GT(double(correct) / double(B * S), 0.9) << correct << " of " << B * S << " next bytes right";
}
