// One fixed-width line per logged step so columns line up in a terminal and in log files.
#include "recipes/console.h"

#include <cmath>
#include <cstdio>

namespace moe {

std::string format_fixed(double v, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}

std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  char buf[32];
  long t = long(std::lround(s));
  if (t >= 3600) std::snprintf(buf, sizeof buf, "%ldh%02ldm", t / 3600, (t % 3600) / 60);
  else if (t >= 60) std::snprintf(buf, sizeof buf, "%ldm%02lds", t / 60, t % 60);
  else std::snprintf(buf, sizeof buf, "%lds", t);
  return buf;
}

std::string format_progress(int64_t step, int64_t total, double loss, double lr, double grad_norm, double tps,
                            double eta, double maxvio) {
  char buf[256];
  int w = int(std::to_string(total).size());
  int n = std::snprintf(buf, sizeof buf, "step %*lld/%lld | loss %.4f | lr %.2e | gnorm %.3f | %7.0f tok/s", w,
                        (long long)step, (long long)total, loss, lr, grad_norm, tps);
  std::string s(buf, size_t(n));
  if (maxvio >= 0) {
    std::snprintf(buf, sizeof buf, " | maxvio %.3f", maxvio);
    s += buf;
  }
  s += " | eta " + format_duration(eta);
  return s;
}

}  // namespace moe
