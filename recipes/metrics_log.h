// metrics.jsonl: one JSON object per logged step (loss, lr, grad norm, tokens/s, losses per layer...).
// On resume, rows after the resume step are dropped so the file matches an uninterrupted run.
#pragma once
#include <cstdint>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

namespace moe {

class MetricsRow {
 public:
  MetricsRow& add(const std::string& key, double value);
  MetricsRow& add(const std::string& key, int64_t value);
  MetricsRow& add(const std::string& key, const std::string& value);
  std::string json() const;

 private:
  std::vector<std::pair<std::string, std::string>> fields_;  // key, JSON text of the value
};

class MetricsLog {
 public:
  // Opens path for appending; when resume_step >= 0 keeps only rows with step <= resume_step.
  MetricsLog(const std::string& path, int64_t resume_step);
  void write(const MetricsRow& row);  // one line, flushed

 private:
  std::string path_;
  std::ofstream out_;
};

}  // namespace moe
