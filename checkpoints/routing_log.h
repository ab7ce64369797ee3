// RoutingLog: the per-step routing-dynamics log routing.h5 (loads, drops, MaxVio, entropy,
// balancer state, extra named series, eval series), buffered and flushed every N steps.
#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

namespace moe {

inline constexpr int64_t kRoutingLogFormatVersion = 1;

// One MoE layer's numbers for one step.
struct RoutingRecord {
  std::vector<double> load;   // [E] tokens (assignments) per expert in the step's global batch
  double dropped = 0;         // tokens dropped by capacity
  double maxvio = 0;          // max_i load_i / mean load - 1
  double router_entropy = 0;  // mean over tokens of -sum p log p
  std::vector<double> state;  // [E] bias / q / beta; empty when the strategy has none
  // Further series by name (load_cv, dead_experts, aux_loss, ...). A name seen for the first
  // time gets a new dataset whose earlier rows are NaN; a known name missing from a step is NaN.
  std::map<std::string, double> scalars;
};

struct RoutingLogOptions {
  int64_t flush_every = 10;       // steps between H5Fflush (1 = every step)
  std::ostream* log = nullptr;    // where open() reports a discarded or moved-aside log
};

// Layout (all datasets extendible along the first dim, chunked, Fletcher32):
//   /steps [T] i64; /layer_<l>/{load [T,E], dropped [T], maxvio [T], router_entropy [T],
//   balancer_state [T,E'] (once a strategy reports state), <scalar name> [T]} f64;
//   /eval/<name>/steps [Te] i64 and /eval/<name>/values [Te] or [Te,K] f64.
//   Root attributes: format_version, num_experts.
class RoutingLog {
 public:
  RoutingLog();
  ~RoutingLog();  // closes (flushing); errors go to stderr since destructors cannot throw
  RoutingLog(const RoutingLog&) = delete;
  RoutingLog& operator=(const RoutingLog&) = delete;

  // Starts a new log at `path` (replacing any file there) when resume_step is nullopt. With a
  // resume step, reopens the existing log and drops every row logged after that step, so the
  // file matches the resumed run exactly; a missing or unreadable file is replaced by a new one
  // (an unreadable one is first renamed to <path>.corrupt), reported on options.log.
  // `layers` are the MoE layers' indices in the model (dataset groups /layer_<l>).
  void open(const std::filesystem::path& path, const std::vector<int>& layers, int64_t num_experts,
            std::optional<int64_t> resume_step = std::nullopt, RoutingLogOptions options = {});
  bool is_open() const;

  // One row for every layer, in the order of `layers`; steps must increase.
  void append(int64_t step, const std::vector<RoutingRecord>& records);
  // An eval series under /eval/<name> ('/' in name nests groups); width fixed by the first call.
  void append_eval(int64_t step, const std::string& name, const std::vector<double>& values);
  void append_eval(int64_t step, const std::string& name, double value);

  void flush();  // writes buffered rows and H5Fflush; call it before writing a checkpoint
  void close();

  int64_t rows() const;                    // steps logged (written + buffered)
  std::optional<int64_t> last_step() const;
  const std::filesystem::path& path() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace moe
