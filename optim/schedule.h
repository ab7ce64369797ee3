// Learning-rate schedules as pure functions of the step (so a resumed run needs no schedule
// state): linear warmup, then cosine to min_lr, or warmup-stable-decay (WSD).
#pragma once
#include <cstdint>
#include <string>

namespace moe {

enum class LrScheduleKind { constant, cosine, wsd };
enum class DecayShape { linear, cosine };

struct LrScheduleConfig {
  LrScheduleKind kind = LrScheduleKind::cosine;
  double max_lr = 3e-4;
  double min_lr = 3e-5;
  int64_t warmup_steps = 0;
  int64_t total_steps = 1000;
  // wsd only: the last decay_steps steps before total_steps decay from max_lr to min_lr.
  int64_t decay_steps = 0;
  DecayShape decay_shape = DecayShape::linear;
};

// Step numbering starts at 0. Warmup (all kinds but constant): lr = max_lr * (step + 1) /
// warmup_steps for step < warmup_steps, so the first step already moves and step
// warmup_steps - 1 reaches max_lr. After total_steps the schedule stays at min_lr.
//   cosine: min + (max - min) (1 + cos(pi r)) / 2, r = (step - warmup) / (total - warmup)
//   wsd:    max_lr until total - decay_steps, then with r = (step - (total - decay)) / decay
//           linear: max - (max - min) r; cosine: as above.
double lr_at(const LrScheduleConfig& cfg, int64_t step);

double warmup_cosine_lr(int64_t step, double max_lr, double min_lr, int64_t warmup_steps, int64_t total_steps);
double wsd_lr(int64_t step, double max_lr, double min_lr, int64_t warmup_steps, int64_t total_steps,
              int64_t decay_steps, DecayShape shape);

// Throws naming the setting and the accepted values.
void validate_schedule(const LrScheduleConfig& cfg);
LrScheduleKind parse_schedule_kind(const std::string& name);  // constant | cosine | wsd
DecayShape parse_decay_shape(const std::string& name);        // linear | cosine

}  // namespace moe
