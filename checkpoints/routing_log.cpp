// routing.h5 writer. Rows are buffered in memory and written as one block per dataset at each
// flush; resume truncates every series to the rows logged up to the resume step.
#include "checkpoints/routing_log.h"

#include <algorithm>
#include <cmath>
#include <iostream>
#include <limits>
#include <set>

#include "checkpoints/hdf5_util.h"
#include "core/error.h"

namespace moe {

namespace fs = std::filesystem;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
const std::set<std::string> kFixedSeries = {"load", "dropped", "maxvio", "router_entropy", "balancer_state"};

// One extendible dataset and the rows waiting for the next flush.
struct Series {
  Series() = default;
  Series(std::string p, bool integer, std::vector<int64_t> rs)
      : path(std::move(p)), is_int(integer), row_shape(std::move(rs)) {}
  std::string path;
  bool is_int = false;
  std::vector<int64_t> row_shape;  // {} for a scalar series, {W} for a vector one
  int64_t written = 0;             // rows on disk
  bool created = false;            // dataset exists in the file
  std::vector<double> pend;
  std::vector<int64_t> pend_i;
  h5::Handle dset;  // kept open between flushes

  int64_t width() const { return row_shape.empty() ? 1 : row_shape[0]; }
  int64_t pending_rows() const { return int64_t(is_int ? pend_i.size() : pend.size()) / width(); }
  int64_t total() const { return written + pending_rows(); }
  void push(const std::vector<double>& row) { pend.insert(pend.end(), row.begin(), row.end()); }
  void push(double v) { pend.push_back(v); }
  void push_nan_rows(int64_t n) { pend.insert(pend.end(), size_t(n * width()), kNaN); }
};

int64_t chunk_rows_for(int64_t width) {
  return std::clamp<int64_t>(int64_t(16384 / (8 * std::max<int64_t>(width, 1))), 16, 512);
}

void write_pending(h5::File& f, Series& s) {
  if (!s.created) {
    f.create_series(s.path, s.is_int ? h5::ElemType::i64 : h5::ElemType::f64, s.row_shape, chunk_rows_for(s.width()),
                    /*compress=*/false);
    s.created = true;
  }
  int64_t n = s.pending_rows();
  if (n == 0) return;
  if (!s.dset.valid()) s.dset = f.open_dataset(s.path);
  if (s.is_int) f.write_rows(s.dset, s.path, h5::ElemType::i64, s.pend_i.data(), s.written, n);
  else f.write_rows(s.dset, s.path, h5::ElemType::f64, s.pend.data(), s.written, n);
  s.written += n;
  s.pend.clear();
  s.pend_i.clear();
}

Series existing_series(const h5::File& f, const std::string& path, int64_t rows) {
  h5::DatasetInfo di = f.info(path);
  if (di.shape.empty() || di.shape.size() > 2) f.fail(path, "is not a row series of rank 1 or 2");
  Series s;
  s.path = path;
  s.is_int = di.type == h5::ElemType::i64;
  if (di.shape.size() == 2) s.row_shape = {di.shape[1]};
  s.written = rows;
  s.created = true;
  return s;
}

void check_name(const std::string& name, const char* what) {
  MOE_CHECK(!name.empty() && name.find("//") == std::string::npos && name.front() != '/' && name.back() != '/',
            "RoutingLog", "bad ", what, " name '", name, "'");
}

}  // namespace

struct EvalSeries {
  Series steps, values;
  std::optional<int64_t> last;
};

struct RoutingLog::Impl {
  fs::path path;
  h5::File file;
  std::vector<int> layers;
  int64_t num_experts = 0;
  RoutingLogOptions opt;
  Series steps;
  std::vector<std::map<std::string, Series>> layer_series;  // parallel to `layers`
  std::map<std::string, EvalSeries> evals;
  std::optional<int64_t> last;
  int64_t since_flush = 0;

  std::string layer_group(size_t i) const { return "/layer_" + std::to_string(layers[i]); }

  void start_fresh() {
    file = h5::File::create(path, /*file_locking=*/false);
    file.set_attr("/", "format_version", kRoutingLogFormatVersion);
    file.set_attr("/", "num_experts", num_experts);
    steps = Series{"/steps", true, {}};
    layer_series.clear();
    layer_series.resize(layers.size());
    for (size_t i = 0; i < layers.size(); ++i) {
      auto& m = layer_series[i];
      std::string g = layer_group(i);
      m["load"] = Series{g + "/load", false, {num_experts}};
      for (const char* n : {"dropped", "maxvio", "router_entropy"}) m[n] = Series{g + "/" + n, false, {}};
    }
    evals.clear();
    last.reset();
    flush_all();  // readers see the structure right away
  }

  void resume(int64_t resume_step) {
    file = h5::File::open(path, h5::File::Mode::read_write, /*file_locking=*/false);
    if (file.attr_int("/", "num_experts") != num_experts)
      file.fail("/", "logged " + std::to_string(file.attr_int("/", "num_experts")) + " experts, the run has " +
                         std::to_string(num_experts));
    std::vector<int64_t> logged = file.read<int64_t>("/steps");
    int64_t keep = 0;
    while (keep < int64_t(logged.size()) && logged[size_t(keep)] <= resume_step) {
      if (keep > 0 && logged[size_t(keep)] <= logged[size_t(keep - 1)]) file.fail("/steps", "steps do not increase");
      ++keep;
    }
    // After a crash between flushes some series may be shorter than /steps: keep what all hold.
    layer_series.clear();
    layer_series.resize(layers.size());
    for (size_t i = 0; i < layers.size(); ++i) {
      std::string g = layer_group(i);
      if (!file.exists(g)) file.fail(g, "missing: the log was written for other MoE layers");
      for (const h5::Child& c : file.children(g))
        if (c.kind == h5::ObjKind::dataset) keep = std::min(keep, file.rows(g + "/" + c.name));
      for (const char* n : {"load", "dropped", "maxvio", "router_entropy"})
        if (!file.exists(g + "/" + n)) file.fail(g + "/" + n, "missing");
      if (file.info(g + "/load").shape.size() != 2 || file.info(g + "/load").shape[1] != num_experts)
        file.fail(g + "/load", "does not have " + std::to_string(num_experts) + " columns");
    }
    steps = existing_series(file, "/steps", keep);
    file.set_rows("/steps", keep);
    for (size_t i = 0; i < layers.size(); ++i) {
      std::string g = layer_group(i);
      for (const h5::Child& c : file.children(g)) {
        if (c.kind != h5::ObjKind::dataset) continue;
        layer_series[i][c.name] = existing_series(file, g + "/" + c.name, keep);
        file.set_rows(g + "/" + c.name, keep);
      }
    }
    last = keep > 0 ? std::optional<int64_t>(logged[size_t(keep - 1)]) : std::nullopt;
    evals.clear();
    if (file.exists("/eval")) resume_evals("/eval", "", resume_step);
    file.flush();
    if (opt.log && (!last || *last < resume_step) && resume_step > 0)
      *opt.log << "routing log " << path.string() << " ends at step " << (last ? std::to_string(*last) : "none")
               << ", resuming at " << resume_step << ": the steps between are missing from it\n";
  }

  void resume_evals(const std::string& group, const std::string& name, int64_t resume_step) {
    bool has_steps = false, has_values = false;
    for (const h5::Child& c : file.children(group)) {
      if (c.kind == h5::ObjKind::group)
        resume_evals(group + "/" + c.name, name.empty() ? c.name : name + "/" + c.name, resume_step);
      if (c.kind == h5::ObjKind::dataset && c.name == "steps") has_steps = true;
      if (c.kind == h5::ObjKind::dataset && c.name == "values") has_values = true;
    }
    if (!has_steps || !has_values) return;
    std::vector<int64_t> st = file.read<int64_t>(group + "/steps");
    int64_t keep = 0;
    while (keep < int64_t(st.size()) && st[size_t(keep)] <= resume_step) ++keep;
    keep = std::min(keep, file.rows(group + "/values"));
    EvalSeries e;
    e.steps = existing_series(file, group + "/steps", keep);
    e.values = existing_series(file, group + "/values", keep);
    file.set_rows(group + "/steps", keep);
    file.set_rows(group + "/values", keep);
    if (keep > 0) e.last = st[size_t(keep - 1)];
    evals[name] = std::move(e);
  }

  void release_datasets() {
    steps.dset.reset();
    for (auto& m : layer_series)
      for (auto& [n, s] : m) s.dset.reset();
    for (auto& [n, e] : evals) {
      e.steps.dset.reset();
      e.values.dset.reset();
    }
  }

  void flush_all() {
    // /steps last: a reader of a half-flushed file finds at least as many rows everywhere else.
    for (auto& m : layer_series)
      for (auto& [n, s] : m) write_pending(file, s);
    for (auto& [n, e] : evals) {
      write_pending(file, e.values);
      write_pending(file, e.steps);
    }
    write_pending(file, steps);
    file.flush();
    since_flush = 0;
  }
};

RoutingLog::RoutingLog() = default;

RoutingLog::~RoutingLog() {
  try {
    close();
  } catch (const std::exception& e) {
    std::cerr << "RoutingLog: " << e.what() << "\n";
  }
}

void RoutingLog::open(const fs::path& path, const std::vector<int>& layers, int64_t num_experts,
                      std::optional<int64_t> resume_step, RoutingLogOptions options) {
  close();
  MOE_CHECK(num_experts > 0, "RoutingLog::open", "num_experts must be positive, got ", num_experts);
  MOE_CHECK(options.flush_every >= 1, "RoutingLog::open", "flush_every must be >= 1, got ", options.flush_every);
  std::set<int> uniq(layers.begin(), layers.end());
  MOE_CHECK(uniq.size() == layers.size(), "RoutingLog::open", "a layer index appears twice");
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  impl->layers = layers;
  impl->num_experts = num_experts;
  impl->opt = options;
  std::error_code ec;
  if (!resume_step) {
    impl->start_fresh();
  } else if (!fs::exists(path, ec)) {
    if (options.log && *resume_step > 0)
      *options.log << "routing log " << path.string() << " not found; starting a new one at step " << *resume_step
                   << "\n";
    impl->start_fresh();
  } else {
    try {
      impl->resume(*resume_step);
    } catch (const Error& e) {
      // A log is worth less than the run: keep the damaged file for inspection, start anew.
      impl->release_datasets();
      impl->file = h5::File();
      fs::path aside = fs::path(path.string() + ".corrupt");
      fs::rename(path, aside, ec);
      MOE_CHECK(!ec, "RoutingLog::open", "cannot read ", path.string(), " (", e.what(), ") nor move it aside: ",
                ec.message());
      if (options.log)
        *options.log << "routing log " << path.string() << " cannot be resumed (" << e.what() << "); moved to "
                     << aside.string() << ", starting a new one\n";
      impl->start_fresh();
    }
  }
  impl_ = std::move(impl);
}

bool RoutingLog::is_open() const { return impl_ != nullptr; }

void RoutingLog::append(int64_t step, const std::vector<RoutingRecord>& records) {
  MOE_CHECK(impl_, "RoutingLog::append", "the log is not open");
  Impl& s = *impl_;
  MOE_CHECK(records.size() == s.layers.size(), "RoutingLog::append", "got ", records.size(),
            " layer records, the log has ", s.layers.size(), " MoE layers");
  MOE_CHECK(!s.last || step > *s.last, "RoutingLog::append", "step ", step, " after step ", *s.last,
            ": steps must increase");
  // Validate everything before buffering anything, so a bad record leaves the log consistent.
  for (size_t i = 0; i < records.size(); ++i) {
    const RoutingRecord& r = records[i];
    MOE_CHECK(int64_t(r.load.size()) == s.num_experts, "RoutingLog::append", "layer_", s.layers[i], " load has ",
              r.load.size(), " values, expected ", s.num_experts);
    auto it = s.layer_series[i].find("balancer_state");
    if (!r.state.empty() && it != s.layer_series[i].end())
      MOE_CHECK(int64_t(r.state.size()) == it->second.width(), "RoutingLog::append", "layer_", s.layers[i],
                " balancer_state has ", r.state.size(), " values, earlier steps had ", it->second.width());
    for (auto& [name, v] : r.scalars) {
      check_name(name, "series");
      MOE_CHECK(name.find('/') == std::string::npos && !kFixedSeries.count(name), "RoutingLog::append",
                "series name '", name, "' is reserved or contains '/'");
    }
  }
  const int64_t row = s.steps.total();
  s.steps.pend_i.push_back(step);
  for (size_t i = 0; i < records.size(); ++i) {
    const RoutingRecord& r = records[i];
    auto& m = s.layer_series[i];
    const std::string g = s.layer_group(i);
    m["load"].push(r.load);
    m["dropped"].push(r.dropped);
    m["maxvio"].push(r.maxvio);
    m["router_entropy"].push(r.router_entropy);
    auto add_new = [&](const std::string& name, std::vector<int64_t> row_shape) -> Series& {
      Series& n = m[name];
      if (n.path.empty()) {
        n = Series{g + "/" + name, false, std::move(row_shape)};
        n.push_nan_rows(row);  // rows logged before this series existed
      }
      return n;
    };
    if (!r.state.empty()) add_new("balancer_state", {int64_t(r.state.size())}).push(r.state);
    for (auto& [name, v] : r.scalars) add_new(name, {}).push(v);
    for (auto& [name, ser] : m)
      if (ser.total() == row) ser.push_nan_rows(1);  // a known series this step did not report
  }
  s.last = step;
  if (++s.since_flush >= s.opt.flush_every) s.flush_all();
}

void RoutingLog::append_eval(int64_t step, const std::string& name, const std::vector<double>& values) {
  MOE_CHECK(impl_, "RoutingLog::append_eval", "the log is not open");
  check_name(name, "eval series");
  MOE_CHECK(!values.empty(), "RoutingLog::append_eval", "no values for '", name, "'");
  Impl& s = *impl_;
  auto it = s.evals.find(name);
  if (it == s.evals.end()) {
    for (auto& [other, e] : s.evals)
      MOE_CHECK(other.rfind(name + "/", 0) != 0 && name.rfind(other + "/", 0) != 0, "RoutingLog::append_eval",
                "eval series '", name, "' would nest with '", other, "'");
    EvalSeries e;
    e.steps = Series{"/eval/" + name + "/steps", true, {}};
    e.values = Series{"/eval/" + name + "/values", false, {int64_t(values.size())}};
    it = s.evals.emplace(name, std::move(e)).first;
  }
  EvalSeries& e = it->second;
  MOE_CHECK(int64_t(values.size()) == e.values.width(), "RoutingLog::append_eval", "'", name, "' has ", values.size(),
            " values, earlier steps had ", e.values.width());
  MOE_CHECK(!e.last || step > *e.last, "RoutingLog::append_eval", "'", name, "' step ", step, " after step ", *e.last);
  e.steps.pend_i.push_back(step);
  e.values.push(values);
  e.last = step;
}

void RoutingLog::append_eval(int64_t step, const std::string& name, double value) {
  MOE_CHECK(impl_, "RoutingLog::append_eval", "the log is not open");
  auto it = impl_->evals.find(name);
  if (it == impl_->evals.end()) {
    check_name(name, "eval series");
    for (auto& [other, e] : impl_->evals)
      MOE_CHECK(other.rfind(name + "/", 0) != 0 && name.rfind(other + "/", 0) != 0, "RoutingLog::append_eval",
                "eval series '", name, "' would nest with '", other, "'");
    EvalSeries e;
    e.steps = Series{"/eval/" + name + "/steps", true, {}};
    e.values = Series{"/eval/" + name + "/values", false, {}};  // [Te], not [Te, 1]
    impl_->evals.emplace(name, std::move(e));
  } else {
    MOE_CHECK(it->second.values.row_shape.empty(), "RoutingLog::append_eval", "'", name,
              "' holds vectors of ", it->second.values.width(), " values, got a scalar");
  }
  EvalSeries& e = impl_->evals.at(name);
  MOE_CHECK(!e.last || step > *e.last, "RoutingLog::append_eval", "'", name, "' step ", step, " after step ", *e.last);
  e.steps.pend_i.push_back(step);
  e.values.push(value);
  e.last = step;
}

void RoutingLog::flush() {
  MOE_CHECK(impl_, "RoutingLog::flush", "the log is not open");
  impl_->flush_all();
}

void RoutingLog::close() {
  if (!impl_) return;
  std::unique_ptr<Impl> impl = std::move(impl_);
  impl->flush_all();
  impl->release_datasets();
  impl->file.close();
}

int64_t RoutingLog::rows() const { return impl_ ? impl_->steps.total() : 0; }
std::optional<int64_t> RoutingLog::last_step() const { return impl_ ? impl_->last : std::nullopt; }
const fs::path& RoutingLog::path() const {
  MOE_CHECK(impl_, "RoutingLog::path", "the log is not open");
  return impl_->path;
}

}  // namespace moe
