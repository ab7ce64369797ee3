// Learning-rate schedules (see schedule.h).
#include "optim/schedule.h"

#include <cmath>

#include "core/error.h"

namespace moe {
namespace {

double cosine_between(double max_lr, double min_lr, double r) {
  return min_lr + 0.5 * (max_lr - min_lr) * (1.0 + std::cos(M_PI * r));
}

}  // namespace

double warmup_cosine_lr(int64_t step, double max_lr, double min_lr, int64_t warmup_steps, int64_t total_steps) {
  if (step < warmup_steps) return max_lr * double(step + 1) / double(warmup_steps);
  if (step >= total_steps) return min_lr;
  const double r = double(step - warmup_steps) / double(total_steps - warmup_steps);
  return cosine_between(max_lr, min_lr, r);
}

double wsd_lr(int64_t step, double max_lr, double min_lr, int64_t warmup_steps, int64_t total_steps,
              int64_t decay_steps, DecayShape shape) {
  if (step < warmup_steps) return max_lr * double(step + 1) / double(warmup_steps);
  if (step >= total_steps) return min_lr;
  const int64_t decay_start = total_steps - decay_steps;
  if (step < decay_start) return max_lr;
  const double r = double(step - decay_start) / double(decay_steps);
  return shape == DecayShape::linear ? max_lr - (max_lr - min_lr) * r : cosine_between(max_lr, min_lr, r);
}

void validate_schedule(const LrScheduleConfig& c) {
  MOE_CHECK(c.max_lr >= 0 && std::isfinite(c.max_lr), "lr schedule", "max_lr must be finite and >= 0, got ",
            c.max_lr);
  MOE_CHECK(c.min_lr >= 0 && c.min_lr <= c.max_lr, "lr schedule", "min_lr must be in [0, max_lr=", c.max_lr,
            "], got ", c.min_lr);
  MOE_CHECK(c.warmup_steps >= 0, "lr schedule", "warmup_steps must be >= 0, got ", c.warmup_steps);
  if (c.kind == LrScheduleKind::constant) return;
  MOE_CHECK(c.total_steps > c.warmup_steps, "lr schedule", "total_steps=", c.total_steps,
            " must exceed warmup_steps=", c.warmup_steps);
  if (c.kind == LrScheduleKind::wsd)
    MOE_CHECK(c.decay_steps > 0 && c.decay_steps <= c.total_steps - c.warmup_steps, "lr schedule",
              "wsd decay_steps must be in [1, total_steps - warmup_steps = ", c.total_steps - c.warmup_steps,
              "], got ", c.decay_steps);
}

double lr_at(const LrScheduleConfig& c, int64_t step) {
  validate_schedule(c);
  MOE_CHECK(step >= 0, "lr schedule", "step must be >= 0, got ", step);
  switch (c.kind) {
    case LrScheduleKind::constant:
      return step < c.warmup_steps ? c.max_lr * double(step + 1) / double(c.warmup_steps) : c.max_lr;
    case LrScheduleKind::cosine:
      return warmup_cosine_lr(step, c.max_lr, c.min_lr, c.warmup_steps, c.total_steps);
    case LrScheduleKind::wsd:
      return wsd_lr(step, c.max_lr, c.min_lr, c.warmup_steps, c.total_steps, c.decay_steps, c.decay_shape);
  }
  MOE_FAIL("lr schedule", "unknown kind");
}

LrScheduleKind parse_schedule_kind(const std::string& name) {
  if (name == "constant") return LrScheduleKind::constant;
  if (name == "cosine") return LrScheduleKind::cosine;
  if (name == "wsd") return LrScheduleKind::wsd;
  MOE_FAIL("lr schedule", "unknown schedule '", name, "', expected constant | cosine | wsd");
}

DecayShape parse_decay_shape(const std::string& name) {
  if (name == "linear") return DecayShape::linear;
  if (name == "cosine") return DecayShape::cosine;
  MOE_FAIL("lr schedule", "unknown decay shape '", name, "', expected linear | cosine");
}

}  // namespace moe
