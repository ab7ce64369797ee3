// Formatting of the console progress line of training (step, loss, lr, grad norm, tokens/s, ETA).
#pragma once
#include <cstdint>
#include <string>

namespace moe {

std::string format_fixed(double v, int decimals);
std::string format_duration(double seconds);  // "1h02m", "3m05s", "42s"
// maxvio < 0: not an MoE model (column omitted).
std::string format_progress(int64_t step, int64_t total, double loss, double lr, double grad_norm,
                            double tokens_per_s, double eta_s, double maxvio);

}  // namespace moe
