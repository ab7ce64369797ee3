// JSON Lines writer for metrics.jsonl. Numbers are written with 17 significant digits so a
// resumed run can be compared bit for bit with an uninterrupted one.
#include "recipes/metrics_log.h"

#include <cmath>
#include <cstdio>
#include <sstream>

#include "core/error.h"

namespace moe {
namespace {
std::string json_string(const std::string& s) {
  std::string o = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\', o += c;
    else if (c == '\n') o += "\\n";
    else o += c;
  }
  return o + "\"";
}
}  // namespace

MetricsRow& MetricsRow::add(const std::string& key, double value) {
  char buf[40];
  if (std::isfinite(value)) std::snprintf(buf, sizeof buf, "%.17g", value);
  else std::snprintf(buf, sizeof buf, "%s", std::isnan(value) ? "NaN" : (value > 0 ? "Infinity" : "-Infinity"));
  fields_.emplace_back(key, buf);
  return *this;
}

MetricsRow& MetricsRow::add(const std::string& key, int64_t value) {
  fields_.emplace_back(key, std::to_string(value));
  return *this;
}

MetricsRow& MetricsRow::add(const std::string& key, const std::string& value) {
  fields_.emplace_back(key, json_string(value));
  return *this;
}

std::string MetricsRow::json() const {
  std::string o = "{";
  for (size_t i = 0; i < fields_.size(); ++i) o += (i ? ", " : "") + json_string(fields_[i].first) + ": " + fields_[i].second;
  return o + "}";
}

MetricsLog::MetricsLog(const std::string& path, int64_t resume_step) : path_(path) {
  std::vector<std::string> kept;
  if (resume_step >= 0) {
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line)) {
      auto pos = line.find("\"step\": ");
      if (pos == std::string::npos) continue;
      int64_t step = std::strtoll(line.c_str() + pos + 8, nullptr, 10);
      if (step <= resume_step) kept.push_back(line);
    }
  }
  out_.open(path, std::ios::trunc);
  MOE_CHECK(out_.good(), path.c_str(), "cannot write metrics (is the run directory writable?)");
  for (const auto& l : kept) out_ << l << "\n";
  out_.flush();
}

void MetricsLog::write(const MetricsRow& row) {
  out_ << row.json() << "\n";
  out_.flush();
  MOE_CHECK(out_.good(), path_.c_str(), "write failed (disk full?)");
}

}  // namespace moe
