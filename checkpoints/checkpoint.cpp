// Checkpoint write / read / resume. The write is crash-safe by construction: a checkpoint only
// becomes visible to find_latest_checkpoint once its renamed directory holds DONE, written last.
#include "checkpoints/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <set>
#include <sstream>

#include "checkpoints/hdf5_util.h"

namespace moe {

namespace fs = std::filesystem;

namespace {

constexpr const char* kDataFile = "ckpt.h5";
constexpr const char* kDoneFile = "DONE";
constexpr const char* kKindAttr = "kind";    // tensor | doubles | ints | string
constexpr const char* kDTypeAttr = "dtype";  // a tensor's moe dtype name
constexpr const char* kScalarAttr = "scalar";  // 1 when a rank-0 tensor was stored as [1]

const char* kMetaKeys[] = {"step", "tokens_seen", "recipe", "world_size", "dp_size", "ep_size", "format_version"};

h5::ElemType elem_for(DType dt) {
  switch (dt) {
    case DType::f32: return h5::ElemType::f32;
    case DType::f64: return h5::ElemType::f64;
    case DType::bf16: return h5::ElemType::u16;  // bit patterns, so the round trip is exact
    case DType::i32: return h5::ElemType::i32;
    case DType::i64: return h5::ElemType::i64;
  }
  return h5::ElemType::f32;
}

std::optional<DType> dtype_from_name(const std::string& s) {
  for (DType d : {DType::f32, DType::f64, DType::bf16, DType::i32, DType::i64})
    if (s == dtype_name(d)) return d;
  return std::nullopt;
}

// "a/b.c" -> "/a/b.c"; rejects what would not round-trip to the same key.
std::string h5_path(const std::string& key) {
  MOE_CHECK(!key.empty(), "write_checkpoint", "empty entry path");
  std::string k = key[0] == '/' ? key.substr(1) : key;
  std::string comp;
  std::istringstream is(k);
  bool first = true;
  size_t n = 0;
  while (std::getline(is, comp, '/')) {
    MOE_CHECK(!comp.empty() && comp != "." && comp != "..", "write_checkpoint", "bad entry path '", key,
              "': empty, '.' or '..' component");
    MOE_CHECK(!(first && comp == "meta"), "write_checkpoint", "entry path '", key,
              "' is under /meta, which holds the checkpoint's attributes");
    first = false;
    ++n;
  }
  MOE_CHECK(n > 0 && k.back() != '/', "write_checkpoint", "bad entry path '", key, "'");
  return "/" + k;
}

void validate_keys(const Checkpoint& c) {
  std::set<std::string> all;
  auto add = [&](const std::string& key) {
    std::string p = h5_path(key);
    MOE_CHECK(all.insert(p).second, "write_checkpoint", "entry path '", key, "' appears twice");
  };
  for (auto& [k, v] : c.tensors) add(k);
  for (auto& [k, v] : c.doubles) add(k);
  for (auto& [k, v] : c.ints) add(k);
  for (auto& [k, v] : c.strings) add(k);
  for (const std::string& p : all)
    for (size_t pos = p.find('/', 1); pos != std::string::npos; pos = p.find('/', pos + 1))
      MOE_CHECK(!all.count(p.substr(0, pos)), "write_checkpoint", "entry '", p.substr(1, pos - 1),
                "' is a dataset and also the group of '", p.substr(1), "'");
  for (auto& [k, t] : c.tensors) MOE_CHECK(t.defined(), "write_checkpoint", "tensor '", k, "' is undefined");
  for (const char* key : kMetaKeys) {
    MOE_CHECK(!c.meta.strings.count(key) && !c.meta.ints.count(key) && !c.meta.doubles.count(key),
              "write_checkpoint", "extra meta key '", key, "' collides with a standard /meta attribute");
  }
}

std::string errno_str() { return std::strerror(errno); }

void fsync_path(const fs::path& p, bool directory) {
  int fd = ::open(p.c_str(), O_RDONLY | (directory ? O_DIRECTORY : 0));
  MOE_CHECK(fd >= 0, "write_checkpoint", "cannot open ", p.string(), " to sync it: ", errno_str());
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  MOE_CHECK(rc == 0, "write_checkpoint", "fsync of ", p.string(), " failed: ", std::strerror(err));
}

void write_text_durably(const fs::path& p, const std::string& text) {
  int fd = ::open(p.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  MOE_CHECK(fd >= 0, "write_checkpoint", "cannot create ", p.string(), ": ", errno_str());
  ssize_t w = ::write(fd, text.data(), text.size());
  int err = errno;
  int rc = ::fsync(fd);
  if (rc != 0) err = errno;
  ::close(fd);
  MOE_CHECK(w == ssize_t(text.size()) && rc == 0, "write_checkpoint", "writing ", p.string(), " failed: ",
            std::strerror(err));
}

void write_h5(const fs::path& file, const Checkpoint& c) {
  h5::File f = h5::File::create(file);
  f.create_group("/meta");
  f.set_attr("/meta", "format_version", kCheckpointFormatVersion);
  f.set_attr("/meta", "step", c.meta.step);
  f.set_attr("/meta", "tokens_seen", c.meta.tokens_seen);
  f.set_attr("/meta", "recipe", c.meta.recipe);
  f.set_attr("/meta", "world_size", c.meta.world_size);
  f.set_attr("/meta", "dp_size", c.meta.dp_size);
  f.set_attr("/meta", "ep_size", c.meta.ep_size);
  for (auto& [k, v] : c.meta.strings) f.set_attr("/meta", k, v);
  for (auto& [k, v] : c.meta.ints) f.set_attr("/meta", k, v);
  for (auto& [k, v] : c.meta.doubles) f.set_attr("/meta", k, v);

  for (auto& [k, t] : c.tensors) {
    std::string p = h5_path(k);
    // A tensor on the cuda device is copied to the host here (HDF5 reads host memory); the
    // file is the same whichever device wrote it.
    Tensor ct = t.device() == Device::cpu ? t.contiguous() : t.detach().to(Device::cpu);
    Shape shape = ct.shape();
    bool scalar = shape.empty();
    if (scalar) shape = {1};
    f.write(p, elem_for(ct.dtype()), ct.raw_data(), shape);
    f.set_attr(p, kKindAttr, "tensor");
    f.set_attr(p, kDTypeAttr, dtype_name(ct.dtype()));
    if (scalar) f.set_attr(p, kScalarAttr, int64_t(1));
  }
  for (auto& [k, v] : c.doubles) {
    std::string p = h5_path(k);
    f.write(p, v);
    f.set_attr(p, kKindAttr, "doubles");
  }
  for (auto& [k, v] : c.ints) {
    std::string p = h5_path(k);
    f.write(p, v);
    f.set_attr(p, kKindAttr, "ints");
  }
  for (auto& [k, v] : c.strings) {
    std::string p = h5_path(k);
    f.write(p, h5::ElemType::u8, v.data(), {int64_t(v.size())});
    f.set_attr(p, kKindAttr, "string");
  }
  f.close();
}

void read_group(const h5::File& f, const std::string& group, Checkpoint& c) {
  for (const h5::Child& ch : f.children(group)) {
    std::string p = (group == "/" ? "/" : group + "/") + ch.name;
    if (p == "/meta") continue;
    if (ch.kind == h5::ObjKind::group) {
      read_group(f, p, c);
      continue;
    }
    if (ch.kind != h5::ObjKind::dataset) f.fail(p, "is neither a group nor a dataset");
    h5::DatasetInfo di = f.info(p);
    int64_t n = 1;
    for (int64_t d : di.shape) n *= d;
    if (n > 0 && !di.fletcher32) f.fail(p, "has no Fletcher32 checksum; not written by moetrain");
    std::string kind = f.has_attr(p, kKindAttr) ? f.attr_string(p, kKindAttr) : "";
    std::string key = p.substr(1);
    if (kind == "tensor") {
      auto dt = dtype_from_name(f.attr_string(p, kDTypeAttr));
      if (!dt) f.fail(p, "unknown dtype '" + f.attr_string(p, kDTypeAttr) + "'");
      if (di.type != elem_for(*dt))
        f.fail(p, std::string("stores ") + h5::elem_type_name(di.type) + " but its dtype says " + dtype_name(*dt));
      Shape shape = di.shape;
      if (f.has_attr(p, kScalarAttr) && f.attr_int(p, kScalarAttr) == 1) {
        if (n != 1) f.fail(p, "is marked scalar but holds " + std::to_string(n) + " elements");
        shape = {};
      }
      Tensor t = Tensor::empty(shape, *dt);
      f.read(p, elem_for(*dt), t.raw_data(), size_t(n));
      c.tensors.emplace(key, t);
    } else if (kind == "doubles") {
      if (di.shape.size() != 1 || di.type != h5::ElemType::f64) f.fail(p, "expected a 1-D f64 vector");
      c.doubles.emplace(key, f.read<double>(p));
    } else if (kind == "ints") {
      if (di.shape.size() != 1 || di.type != h5::ElemType::i64) f.fail(p, "expected a 1-D i64 vector");
      c.ints.emplace(key, f.read<int64_t>(p));
    } else if (kind == "string") {
      if (di.shape.size() != 1 || di.type != h5::ElemType::u8) f.fail(p, "expected a 1-D u8 string");
      std::string s(size_t(n), '\0');
      f.read(p, h5::ElemType::u8, s.data(), s.size());
      c.strings.emplace(key, std::move(s));
    } else {
      f.fail(p, "has no valid 'kind' attribute (tensor, doubles, ints or string)");
    }
  }
}

Checkpoint read_h5(const fs::path& file) {
  h5::File f = h5::File::open(file, h5::File::Mode::read);
  Checkpoint c;
  if (!f.exists("/meta") || !f.has_attr("/meta", "format_version"))
    f.fail("/meta", "missing format_version: not a moetrain checkpoint");
  c.meta.format_version = f.attr_int("/meta", "format_version");
  if (c.meta.format_version > kCheckpointFormatVersion || c.meta.format_version < 1)
    f.fail("/meta", "format version " + std::to_string(c.meta.format_version) + ", this build reads versions 1.." +
                        std::to_string(kCheckpointFormatVersion));
  c.meta.step = f.attr_int("/meta", "step");
  c.meta.tokens_seen = f.attr_int("/meta", "tokens_seen");
  c.meta.recipe = f.attr_string("/meta", "recipe");
  c.meta.world_size = f.attr_int("/meta", "world_size");
  c.meta.dp_size = f.attr_int("/meta", "dp_size");
  c.meta.ep_size = f.attr_int("/meta", "ep_size");
  for (const std::string& a : f.attr_names("/meta")) {
    if (std::find(std::begin(kMetaKeys), std::end(kMetaKeys), a) != std::end(kMetaKeys)) continue;
    std::string k = f.attr_kind("/meta", a);
    if (k == "string") c.meta.strings[a] = f.attr_string("/meta", a);
    else if (k == "int") c.meta.ints[a] = f.attr_int("/meta", a);
    else if (k == "float") c.meta.doubles[a] = f.attr_double("/meta", a);
    else f.fail("/meta", "attribute '" + a + "' has an unsupported type");
  }
  read_group(f, "/", c);
  f.close();
  return c;
}

std::optional<int64_t> parse_step_dir(const std::string& name) {
  if (name.size() <= 5 || name.compare(0, 5, "step_") != 0) return std::nullopt;
  int64_t s = 0;
  for (size_t i = 5; i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return std::nullopt;
    s = s * 10 + (name[i] - '0');
  }
  return s;
}

bool is_complete(const fs::path& dir) {
  std::error_code ec;
  return fs::is_regular_file(dir / kDoneFile, ec) && fs::is_regular_file(dir / kDataFile, ec);
}

bool is_tmp_name(const std::string& name) {
  return name.compare(0, 5, "step_") == 0 && name.size() > 4 && name.compare(name.size() - 4, 4, ".tmp") == 0;
}

// Best effort: a checkpoint that cannot be deleted costs disk space, not correctness.
void prune(const fs::path& dir, int64_t written_step, int keep) {
  std::error_code ec;
  std::vector<std::pair<int64_t, fs::path>> older;
  for (auto it = fs::directory_iterator(dir, ec); !ec && it != fs::directory_iterator(); it.increment(ec)) {
    std::string name = it->path().filename().string();
    if (is_tmp_name(name)) {
      fs::remove_all(it->path(), ec);
      ec.clear();
      continue;
    }
    auto s = parse_step_dir(name);
    if (!s || *s == written_step || !it->is_directory()) continue;
    if (!is_complete(it->path())) {
      fs::remove_all(it->path(), ec);  // a rename that never got its DONE: a killed write
      ec.clear();
    } else if (*s < written_step) {
      older.emplace_back(*s, it->path());
    }
  }
  if (keep <= 0) return;
  std::sort(older.begin(), older.end(), [](auto& a, auto& b) { return a.first > b.first; });
  for (size_t i = size_t(keep - 1); i < older.size(); ++i) {
    fs::remove_all(older[i].second, ec);
    ec.clear();
  }
}

}  // namespace

bool Checkpoint::has(const std::string& path) const {
  return tensors.count(path) || doubles.count(path) || ints.count(path) || strings.count(path);
}

namespace {
template <class M>
const typename M::mapped_type& lookup(const M& m, const std::string& path, const char* kind, const fs::path& src) {
  auto it = m.find(path);
  MOE_CHECK(it != m.end(), "checkpoint", (src.empty() ? std::string("(in memory)") : src.string()), ": missing ",
            kind, " '", path, "'");
  return it->second;
}
}  // namespace

const Tensor& Checkpoint::tensor(const std::string& path) const { return lookup(tensors, path, "tensor", source); }
const std::vector<double>& Checkpoint::doubles_at(const std::string& path) const {
  return lookup(doubles, path, "f64 vector", source);
}
const std::vector<int64_t>& Checkpoint::ints_at(const std::string& path) const {
  return lookup(ints, path, "i64 vector", source);
}
const std::string& Checkpoint::string_at(const std::string& path) const {
  return lookup(strings, path, "string", source);
}

fs::path checkpoint_dir(const fs::path& run_dir, int64_t step) {
  char name[32];
  std::snprintf(name, sizeof name, "step_%06lld", static_cast<long long>(step));
  return run_dir / "checkpoints" / name;
}

fs::path write_checkpoint(const fs::path& run_dir, int64_t step, const Checkpoint& ckpt, int keep) {
  MOE_CHECK(step >= 0, "write_checkpoint", "negative step ", step);
  MOE_CHECK(ckpt.meta.step == step, "write_checkpoint", "meta.step is ", ckpt.meta.step, " but the step is ", step);
  validate_keys(ckpt);

  const fs::path dir = run_dir / "checkpoints";
  const fs::path final_dir = checkpoint_dir(run_dir, step);
  const fs::path tmp = fs::path(final_dir.string() + ".tmp");
  std::error_code ec;
  const bool new_dir = !fs::is_directory(dir, ec);
  fs::create_directories(dir, ec);
  MOE_CHECK(!ec && fs::is_directory(dir), "write_checkpoint", "cannot create directory ", dir.string(), ": ",
            ec ? ec.message() : std::string("a file is in the way"));
  if (new_dir) fsync_path(run_dir, true);  // the checkpoints/ entry itself must survive a crash
  fs::remove_all(tmp, ec);  // a killed earlier write of this step
  MOE_CHECK(!ec, "write_checkpoint", "cannot remove stale ", tmp.string(), ": ", ec.message());
  fs::create_directory(tmp, ec);
  MOE_CHECK(!ec, "write_checkpoint", "cannot create directory ", tmp.string(), ": ", ec.message());

  try {
    write_h5(tmp / kDataFile, ckpt);
    fsync_path(tmp / kDataFile, false);
    fsync_path(tmp, true);
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }

  // Replacing the same step (a rerun after resume): move the old one aside under a .tmp name so
  // a crash between the renames leaves only things that find_latest_checkpoint ignores or reads.
  fs::path aside;
  if (fs::exists(final_dir, ec)) {
    aside = fs::path(final_dir.string() + ".replaced.tmp");
    fs::remove_all(aside, ec);
    fs::rename(final_dir, aside, ec);
    if (ec) {
      std::string msg = ec.message();
      fs::remove_all(tmp, ec);
      MOE_FAIL("write_checkpoint", "cannot move the existing ", final_dir.string(), " aside: ", msg);
    }
  }
  fs::rename(tmp, final_dir, ec);
  if (ec) {
    std::string msg = ec.message();
    if (!aside.empty()) fs::rename(aside, final_dir, ec);
    MOE_FAIL("write_checkpoint", "cannot rename ", tmp.string(), " to ", final_dir.string(), ": ", msg);
  }
  fsync_path(dir, true);
  write_text_durably(final_dir / kDoneFile, "step " + std::to_string(step) + "\n");
  fsync_path(final_dir, true);
  prune(dir, step, keep);
  return final_dir;
}

Checkpoint read_checkpoint(const fs::path& path) {
  std::error_code ec;
  fs::path file = path, source = path;
  if (fs::is_directory(path, ec)) {
    MOE_CHECK(fs::is_regular_file(path / kDoneFile, ec), "read_checkpoint", path.string(),
              " is incomplete (no DONE marker: the write was interrupted)");
    file = path / kDataFile;
  } else {
    MOE_CHECK(fs::exists(path, ec), "read_checkpoint", path.string(), ": no such checkpoint");
    source = path.parent_path();
  }
  try {
    Checkpoint c = read_h5(file);
    c.source = source;
    return c;
  } catch (const Error& e) {
    throw Error(std::string("read_checkpoint: ") + e.what());
  }
}

std::vector<fs::path> list_checkpoints(const fs::path& run_dir) {
  std::vector<std::pair<int64_t, fs::path>> found;
  std::error_code ec;
  const fs::path dir = run_dir / "checkpoints";
  for (auto it = fs::directory_iterator(dir, ec); !ec && it != fs::directory_iterator(); it.increment(ec)) {
    auto s = parse_step_dir(it->path().filename().string());
    if (s && it->is_directory(ec) && is_complete(it->path())) found.emplace_back(*s, it->path());
  }
  std::sort(found.begin(), found.end(), [](auto& a, auto& b) { return a.first > b.first; });
  std::vector<fs::path> out;
  for (auto& [s, p] : found) out.push_back(p);
  return out;
}

std::optional<fs::path> find_latest_checkpoint(const fs::path& run_dir) {
  auto all = list_checkpoints(run_dir);
  if (all.empty()) return std::nullopt;
  return all.front();
}

std::optional<Checkpoint> resume_latest(const fs::path& run_dir, std::ostream& log) {
  auto all = list_checkpoints(run_dir);
  if (all.empty()) return std::nullopt;
  std::vector<std::string> failures;
  for (size_t i = 0; i < all.size(); ++i) {
    try {
      return read_checkpoint(all[i]);
    } catch (const std::exception& e) {
      log << "checkpoint " << all[i].string() << " cannot be read (" << e.what() << ")";
      if (i + 1 < all.size()) log << "; falling back to " << all[i + 1].string();
      log << "\n";
      failures.push_back(all[i].filename().string() + ": " + e.what());
    }
  }
  std::ostringstream os;
  os << "no readable checkpoint in " << (run_dir / "checkpoints").string();
  for (auto& f : failures) os << "; " << f;
  throw Error("resume_latest: " + os.str());
}

}  // namespace moe
