// Checkpoints: bit-exact round trip of every dtype, Fletcher32 naming the corrupt dataset,
// resume fallback, killed writes never picked, keep-N pruning, unwritable run directories.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>
#include <thread>

#include "checkpoints/checkpoint.h"
#include "checkpoints/hdf5_util.h"
#include "checkpoints/inspect.h"
#include "core/rng.h"

using namespace moe;
namespace fs = std::filesystem;

namespace {

// A fresh directory per test, removed afterwards.
struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& tag) {
    path = fs::temp_directory_path() / ("moe_ckpt_" + tag + "_" + std::to_string(::getpid()));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

Tensor random_f32(const Shape& s, uint64_t seed) {
  Philox r(seed, uint64_t(RngStream::test));
  std::vector<float> v(size_t(shape_numel(s)));
  for (auto& x : v) x = float(r.normal());
  return Tensor::from_vector(v, s);
}

bool same_bits(const Tensor& a, const Tensor& b) {
  if (a.dtype() != b.dtype() || a.shape() != b.shape()) return false;
  Tensor ca = a.contiguous(), cb = b.contiguous();
  return std::memcmp(ca.raw_data(), cb.raw_data(), size_t(a.numel()) * dtype_size(a.dtype())) == 0;
}

// A small checkpoint whose weights depend on `step`, so two steps are distinguishable.
Checkpoint make_ckpt(int64_t step, int64_t weight_elems = 37 * 11) {
  Checkpoint c;
  c.meta.step = step;
  c.meta.tokens_seen = step * 4096;
  c.meta.recipe = "[train]\nsteps = 1000\n";
  c.tensors["model/layers.0.attn.wq"] = random_f32({weight_elems / 11, 11}, uint64_t(step) + 1);
  c.tensors["optim/m/layers.0.attn.wq"] = random_f32({weight_elems / 11, 11}, uint64_t(step) + 2);
  c.doubles["balance/layer_1/bias"] = {0.25 * double(step), -1.5, 3.0};
  c.ints["rng/rank_0/offsets"] = {step * 7, 11};
  return c;
}

void flip_byte(const fs::path& file, int64_t offset) {
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  ASSERT_TRUE(f.good()) << file;
  f.seekg(offset);
  char c = 0;
  f.read(&c, 1);
  c = char(c ^ 0x5a);
  f.seekp(offset);
  f.write(&c, 1);
}

int64_t find_bytes(const fs::path& file, const std::string& needle) {
  std::ifstream f(file, std::ios::binary);
  std::string all((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  size_t p = all.find(needle);
  return p == std::string::npos ? -1 : int64_t(p);
}

int64_t chunk_offset(const fs::path& file, const std::string& dset) {
  h5::File f = h5::File::open(file, h5::File::Mode::read);
  return f.first_chunk_offset(dset);
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(Checkpoint, RoundTripIsBitExactForEveryDtype) {
  TempDir tmp("roundtrip");
  Checkpoint c;
  c.meta.step = 12;
  c.meta.tokens_seen = 123456789012345;
  c.meta.world_size = 4;
  c.meta.dp_size = 2;
  c.meta.ep_size = 2;
  // Longer than an HDF5 object header message (64 KiB): needs dense attribute storage.
  for (int i = 0; i < 9000; ++i) c.meta.recipe += "key_" + std::to_string(i) + " = 1\n";
  c.meta.strings["backend"] = "cpu";
  c.meta.ints["seed"] = -7;
  c.meta.doubles["lr"] = 3e-4;

  Tensor f32 = random_f32({3, 5, 7}, 1);
  f32.data<float>()[0] = -0.0f;
  f32.data<float>()[1] = std::numeric_limits<float>::quiet_NaN();
  f32.data<float>()[2] = std::numeric_limits<float>::denorm_min();
  f32.data<float>()[3] = -std::numeric_limits<float>::infinity();
  c.tensors["model/embed.weight"] = f32;
  c.tensors["model/layers.0.ffn.experts.w1"] = random_f32({3, 5, 7}, 2).to(DType::f64);
  c.tensors["model/layers.0.ffn.experts.w2"] = random_f32({13}, 3).to(DType::bf16);
  c.tensors["data/rank_0/perm"] = Tensor::from_vector<int32_t>({-3, 0, 2147483647, -2147483647 - 1, 5, 6}, {2, 3});
  c.tensors["data/rank_1/perm"] = Tensor::from_vector<int64_t>({INT64_MIN, -1, 0, 1, INT64_MAX}, {5});
  c.tensors["model/scale"] = Tensor::scalar(2.5, DType::f32);
  c.tensors["model/empty"] = Tensor::zeros({0, 4}, DType::f32);
  c.tensors["model/transposed"] = random_f32({6, 9}, 4).transpose(0, 1);  // a non-contiguous view
  c.tensors["model/big"] = random_f32({300, 1111}, 5);                      // several chunks
  c.doubles["balance/layer_1/bias"] = {0.1, -0.0, 1e300, std::numeric_limits<double>::denorm_min()};
  c.doubles["balance/layer_3/empty"] = {};
  c.ints["rng/rank_0/offsets"] = {0, INT64_MAX, -1};
  c.strings["data/rank_0/shard"] = std::string("train_000.bin\0é", 16);

  fs::path dir = write_checkpoint(tmp.path, 12, c, 3);
  EXPECT_EQ(dir, tmp.path / "checkpoints" / "step_000012");
  EXPECT_TRUE(fs::is_regular_file(dir / "DONE"));
  EXPECT_FALSE(fs::exists(tmp.path / "checkpoints" / "step_000012.tmp"));

  Checkpoint r = read_checkpoint(dir);
  EXPECT_EQ(r.source, dir);
  EXPECT_EQ(r.meta.step, 12);
  EXPECT_EQ(r.meta.tokens_seen, 123456789012345);
  EXPECT_EQ(r.meta.world_size, 4);
  EXPECT_EQ(r.meta.dp_size, 2);
  EXPECT_EQ(r.meta.ep_size, 2);
  EXPECT_EQ(r.meta.format_version, kCheckpointFormatVersion);
  EXPECT_EQ(r.meta.recipe, c.meta.recipe);
  EXPECT_EQ(r.meta.strings, c.meta.strings);
  EXPECT_EQ(r.meta.ints, c.meta.ints);
  EXPECT_EQ(r.meta.doubles, c.meta.doubles);
  ASSERT_EQ(r.tensors.size(), c.tensors.size());
  for (auto& [k, t] : c.tensors) {
    ASSERT_TRUE(r.tensors.count(k)) << k;
    EXPECT_TRUE(same_bits(r.tensors.at(k), t)) << k << " " << r.tensors.at(k).shape_str() << " "
                                               << dtype_name(r.tensors.at(k).dtype());
  }
  EXPECT_EQ(r.tensor("model/scale").dim(), 0);
  EXPECT_EQ(r.tensor("model/empty").shape(), (Shape{0, 4}));
  ASSERT_EQ(r.doubles.size(), c.doubles.size());
  for (auto& [k, v] : c.doubles) {
    auto& rv = r.doubles_at(k);
    ASSERT_EQ(rv.size(), v.size()) << k;
    EXPECT_EQ(std::memcmp(rv.data(), v.data(), v.size() * 8), 0) << k;
  }
  EXPECT_EQ(r.ints, c.ints);
  EXPECT_EQ(r.strings, c.strings);
  EXPECT_EQ(r.string_at("data/rank_0/shard").size(), 16u);
  EXPECT_NE(error_of([&] { r.tensor("model/missing"); }).find("model/missing"), std::string::npos);

  // The layout is the documented one, and every non-empty dataset carries Fletcher32.
  h5::File f = h5::File::open(dir / "ckpt.h5", h5::File::Mode::read);
  EXPECT_EQ(f.kind("/model/layers.0.ffn.experts.w2"), h5::ObjKind::dataset);
  EXPECT_EQ(f.info("/model/layers.0.ffn.experts.w2").type, h5::ElemType::u16);
  EXPECT_EQ(f.attr_string("/model/layers.0.ffn.experts.w2", "dtype"), "bf16");
  EXPECT_TRUE(f.info("/model/big").fletcher32);
  EXPECT_TRUE(f.info("/data/rank_0/shard").fletcher32);
  EXPECT_EQ(f.attr_int("/meta", "step"), 12);
}

TEST(Checkpoint, FlippedByteNamesTheDataset) {
  TempDir tmp("flip");
  fs::path dir = write_checkpoint(tmp.path, 5, make_ckpt(5), 2);
  fs::path file = dir / "ckpt.h5";
  ASSERT_NO_THROW(read_checkpoint(dir));
  flip_byte(file, chunk_offset(file, "/optim/m/layers.0.attn.wq") + 17);
  std::string msg = error_of([&] { read_checkpoint(dir); });
  EXPECT_NE(msg.find("/optim/m/layers.0.attn.wq"), std::string::npos) << msg;
  EXPECT_NE(msg.find(file.string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("Fletcher32"), std::string::npos) << msg;
}

TEST(Checkpoint, FlippedByteInRecipeAttributeIsCaught) {
  TempDir tmp("flipattr");
  Checkpoint c = make_ckpt(3);
  c.meta.recipe = "[model]\nd_model = 128 # UNIQUE_RECIPE_MARKER\n";
  fs::path dir = write_checkpoint(tmp.path, 3, c, 2);
  int64_t at = find_bytes(dir / "ckpt.h5", "UNIQUE_RECIPE_MARKER");
  ASSERT_GE(at, 0);
  flip_byte(dir / "ckpt.h5", at + 3);
  std::string msg = error_of([&] { read_checkpoint(dir); });
  EXPECT_NE(msg.find("read_checkpoint"), std::string::npos) << msg;
  EXPECT_NE(msg.find("checksum"), std::string::npos) << msg;
}

TEST(Checkpoint, ResumeLatestFallsBackToPreviousGoodAndSaysSo) {
  TempDir tmp("resume");
  for (int64_t s : {100, 200, 300}) write_checkpoint(tmp.path, s, make_ckpt(s), 5);
  fs::path f200 = checkpoint_dir(tmp.path, 200) / "ckpt.h5";
  fs::path f300 = checkpoint_dir(tmp.path, 300) / "ckpt.h5";
  flip_byte(f200, chunk_offset(f200, "/model/layers.0.attn.wq") + 4);
  fs::resize_file(f300, fs::file_size(f300) / 2);  // truncated, as by a full disk

  ASSERT_EQ(find_latest_checkpoint(tmp.path), checkpoint_dir(tmp.path, 300));
  std::ostringstream log;
  auto c = resume_latest(tmp.path, log);
  ASSERT_TRUE(c.has_value());
  EXPECT_EQ(c->meta.step, 100);
  EXPECT_EQ(c->source, checkpoint_dir(tmp.path, 100));
  EXPECT_TRUE(same_bits(c->tensor("model/layers.0.attn.wq"), make_ckpt(100).tensor("model/layers.0.attn.wq")));
  std::string l = log.str();
  EXPECT_NE(l.find("step_000300 cannot be read"), std::string::npos) << l;
  EXPECT_NE(l.find("falling back to " + checkpoint_dir(tmp.path, 200).string()), std::string::npos) << l;
  EXPECT_NE(l.find("/model/layers.0.attn.wq"), std::string::npos) << l;
  EXPECT_NE(l.find("falling back to " + checkpoint_dir(tmp.path, 100).string()), std::string::npos) << l;

  // When nothing is readable, the error lists every failure.
  fs::path f100 = checkpoint_dir(tmp.path, 100) / "ckpt.h5";
  flip_byte(f100, chunk_offset(f100, "/rng/rank_0/offsets"));
  std::ostringstream log2;
  std::string msg = error_of([&] { resume_latest(tmp.path, log2); });
  EXPECT_NE(msg.find("no readable checkpoint"), std::string::npos) << msg;
  EXPECT_NE(msg.find("/rng/rank_0/offsets"), std::string::npos) << msg;
  EXPECT_NE(msg.find("step_000300"), std::string::npos) << msg;

  TempDir empty("resume_empty");
  std::ostringstream log3;
  EXPECT_FALSE(resume_latest(empty.path, log3).has_value());
  EXPECT_TRUE(log3.str().empty());
}

TEST(Checkpoint, InterruptedWritesAreNeverPicked) {
  TempDir tmp("interrupted");
  write_checkpoint(tmp.path, 100, make_ckpt(100), 5);
  fs::path ck = tmp.path / "checkpoints";
  // Killed before the rename: a .tmp dir with a partial file.
  fs::create_directories(ck / "step_000200.tmp");
  fs::copy_file(ck / "step_000100" / "ckpt.h5", ck / "step_000200.tmp" / "ckpt.h5");
  fs::resize_file(ck / "step_000200.tmp" / "ckpt.h5", 1000);
  // Killed after the rename, before DONE: a complete-looking file but no marker.
  write_checkpoint(tmp.path, 300, make_ckpt(300), 5);
  fs::remove(ck / "step_000300" / "DONE");

  EXPECT_EQ(find_latest_checkpoint(tmp.path), ck / "step_000100");
  std::ostringstream log;
  auto c = resume_latest(tmp.path, log);
  ASSERT_TRUE(c.has_value());
  EXPECT_EQ(c->meta.step, 100);
  EXPECT_TRUE(log.str().empty()) << log.str();
  EXPECT_NE(error_of([&] { read_checkpoint(ck / "step_000300"); }).find("no DONE marker"), std::string::npos);

  // The next write cleans both up.
  write_checkpoint(tmp.path, 400, make_ckpt(400), 5);
  EXPECT_FALSE(fs::exists(ck / "step_000200.tmp"));
  EXPECT_FALSE(fs::exists(ck / "step_000300"));
  EXPECT_EQ(list_checkpoints(tmp.path), (std::vector<fs::path>{ck / "step_000400", ck / "step_000100"}));
}

TEST(Checkpoint, SigkillDuringWritesLeavesOnlyReadableCheckpoints) {
  TempDir tmp("sigkill");
  const Checkpoint base = make_ckpt(1, 11 * 40000);
  auto with_step = [&](int64_t s) {
    Checkpoint c = base;
    c.meta.step = s;
    return c;
  };
  // One write's duration sets the kill times, so they land before, inside and after writes.
  auto t0 = std::chrono::steady_clock::now();
  write_checkpoint(tmp.path, 1, with_step(1), 2);
  auto write_us = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0).count();
  int picked = 0;
  for (double frac : {0.0, 0.2, 0.5, 0.8, 1.1, 1.6, 2.3, 3.5}) {
    fs::remove_all(tmp.path / "checkpoints");
    pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      try {
        for (int64_t s = 1;; ++s) write_checkpoint(tmp.path, s, with_step(s), 2);
      } catch (...) {
      }
      ::_exit(3);
    }
    std::this_thread::sleep_for(std::chrono::microseconds(int64_t(frac * double(write_us))));
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
    ASSERT_TRUE(WIFSIGNALED(status)) << "writer exited on its own with " << WEXITSTATUS(status);
    // Whatever the writer left, resume picks a checkpoint that reads cleanly or finds none.
    std::ostringstream log;
    auto c = resume_latest(tmp.path, log);
    EXPECT_TRUE(log.str().empty()) << "killed after " << frac << " writes: " << log.str();
    if (c) {
      ++picked;
      EXPECT_TRUE(same_bits(c->tensor("model/layers.0.attn.wq"), base.tensor("model/layers.0.attn.wq")));
    }
  }
  EXPECT_GE(picked, 1) << "one write takes " << write_us << " us";
}

TEST(Checkpoint, KeepsTheNewestNAndNeverTheJustWrittenOne) {
  TempDir tmp("keep");
  fs::path ck = tmp.path / "checkpoints";
  for (int64_t s = 1; s <= 5; ++s) write_checkpoint(tmp.path, s * 10, make_ckpt(s * 10), 2);
  EXPECT_EQ(list_checkpoints(tmp.path), (std::vector<fs::path>{ck / "step_000050", ck / "step_000040"}));
  // Resumed from an older state: the new one is kept, newer ones are not touched.
  write_checkpoint(tmp.path, 30, make_ckpt(30), 1);
  EXPECT_EQ(list_checkpoints(tmp.path),
            (std::vector<fs::path>{ck / "step_000050", ck / "step_000040", ck / "step_000030"}));
  // Rewriting the same step replaces it.
  Checkpoint again = make_ckpt(30);
  again.meta.tokens_seen = 1;
  write_checkpoint(tmp.path, 30, again, 1);
  EXPECT_EQ(read_checkpoint(ck / "step_000030").meta.tokens_seen, 1);
  EXPECT_FALSE(fs::exists(ck / "step_000030.replaced.tmp"));
  // keep <= 0 keeps everything.
  TempDir all("keepall");
  for (int64_t s = 1; s <= 4; ++s) write_checkpoint(all.path, s, make_ckpt(s), 0);
  EXPECT_EQ(list_checkpoints(all.path).size(), 4u);
}

TEST(Checkpoint, UnwritableRunDirGivesClearErrorAndDamagesNothing) {
  TempDir tmp("unwritable");
  fs::path good = write_checkpoint(tmp.path, 100, make_ckpt(100), 3);

  // A file where the checkpoints directory should be.
  TempDir blocked("blocked");
  std::ofstream(blocked.path / "checkpoints") << "not a directory";
  std::string msg = error_of([&] { write_checkpoint(blocked.path, 1, make_ckpt(1), 3); });
  EXPECT_NE(msg.find("write_checkpoint"), std::string::npos) << msg;
  EXPECT_NE(msg.find((blocked.path / "checkpoints").string()), std::string::npos) << msg;

  // A directory this process may not write to. Root ignores permissions, so the writer runs in
  // a child that drops to the 'nobody' user first.
  ::chmod(tmp.path.c_str(), 0555);
  ::chmod((tmp.path / "checkpoints").c_str(), 0555);
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::close(fds[0]);
    if (::geteuid() == 0 && (::setgid(65534) != 0 || ::setuid(65534) != 0)) ::_exit(4);
    std::string m = error_of([&] { write_checkpoint(tmp.path, 200, make_ckpt(200), 1); });
    if (::write(fds[1], m.data(), m.size()) < 0) ::_exit(5);
    ::_exit(m.empty() ? 1 : 0);
  }
  ::close(fds[1]);
  std::string child_msg;
  char buf[512];
  for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) > 0;) child_msg.append(buf, size_t(n));
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  ::chmod((tmp.path / "checkpoints").c_str(), 0755);
  ::chmod(tmp.path.c_str(), 0755);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "write into a read-only run dir did not fail";
  EXPECT_NE(child_msg.find("write_checkpoint"), std::string::npos) << child_msg;
  EXPECT_NE(child_msg.find("step_000200.tmp"), std::string::npos) << child_msg;
  EXPECT_NE(child_msg.find("ermission denied"), std::string::npos) << child_msg;

  // The existing checkpoint is untouched and nothing half-written appeared.
  std::ostringstream log;
  auto c = resume_latest(tmp.path, log);
  ASSERT_TRUE(c.has_value());
  EXPECT_EQ(c->meta.step, 100);
  EXPECT_TRUE(log.str().empty());
  std::vector<std::string> names;
  for (auto& e : fs::directory_iterator(tmp.path / "checkpoints")) names.push_back(e.path().filename().string());
  EXPECT_EQ(names, (std::vector<std::string>{"step_000100"}));
}

TEST(Checkpoint, RejectsBadInputsWithOneClearLine) {
  TempDir tmp("bad");
  Checkpoint c = make_ckpt(7);
  EXPECT_NE(error_of([&] { write_checkpoint(tmp.path, 8, c, 1); }).find("meta.step is 7"), std::string::npos);
  Checkpoint m = make_ckpt(7);
  m.doubles["meta/x"] = {1};
  EXPECT_NE(error_of([&] { write_checkpoint(tmp.path, 7, m, 1); }).find("under /meta"), std::string::npos);
  Checkpoint d = make_ckpt(7);
  d.doubles["model/layers.0.attn.wq/extra"] = {1};
  EXPECT_NE(error_of([&] { write_checkpoint(tmp.path, 7, d, 1); }).find("is a dataset and also the group"),
            std::string::npos);
  Checkpoint k = make_ckpt(7);
  k.meta.ints["step"] = 3;
  EXPECT_NE(error_of([&] { write_checkpoint(tmp.path, 7, k, 1); }).find("collides"), std::string::npos);
  EXPECT_FALSE(fs::exists(tmp.path / "checkpoints" / "step_000007"));

  // A newer format version is refused, naming both versions.
  fs::path dir = write_checkpoint(tmp.path, 7, c, 1);
  {
    h5::File f = h5::File::open(dir / "ckpt.h5", h5::File::Mode::read_write);
    f.set_attr("/meta", "format_version", int64_t(99));
    f.close();
  }
  std::string msg = error_of([&] { read_checkpoint(dir); });
  EXPECT_NE(msg.find("format version 99"), std::string::npos) << msg;
  EXPECT_NE(msg.find("1..1"), std::string::npos) << msg;
  EXPECT_NE(error_of([&] { read_checkpoint(tmp.path / "nope"); }).find("no such checkpoint"), std::string::npos);
}

TEST(Checkpoint, DescribeListsEveryDatasetAndFlagsCorruption) {
  TempDir tmp("describe");
  Checkpoint c = make_ckpt(9);
  c.strings["data/rank_0/shard"] = "train_000.bin";
  c.tensors["model/nan"] = Tensor::from_vector<float>({1.0f, NAN, 3.0f}, {3});
  fs::path dir = write_checkpoint(tmp.path, 9, c, 1);
  std::ostringstream out;
  EXPECT_EQ(describe_h5(dir, out), 0);
  std::string s = out.str();
  EXPECT_NE(s.find("@step = 9"), std::string::npos) << s;
  EXPECT_NE(s.find("layers.0.attn.wq  f32 [37, 11]  fletcher32  min "), std::string::npos) << s;
  EXPECT_NE(s.find("bias  f64 [3]  fletcher32  min -1.5 mean 1.25 max 3"), std::string::npos) << s;
  EXPECT_NE(s.find("nan  f32 [3]  fletcher32  min 1 mean 2 max 3  non-finite 1"), std::string::npos) << s;
  EXPECT_NE(s.find("\"train_000.bin\""), std::string::npos) << s;
  EXPECT_NE(s.find("every dataset read cleanly"), std::string::npos) << s;

  fs::path file = dir / "ckpt.h5";
  flip_byte(file, chunk_offset(file, "/balance/layer_1/bias") + 2);
  std::ostringstream bad;
  EXPECT_EQ(describe_h5(file, bad), 1);
  EXPECT_NE(bad.str().find("bias  f64 [3]  fletcher32  CORRUPT: "), std::string::npos) << bad.str();
  EXPECT_NE(bad.str().find("1 corrupt dataset(s)"), std::string::npos) << bad.str();
}
