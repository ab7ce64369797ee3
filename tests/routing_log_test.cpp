// routing.h5: rows appended and read back through HDF5, late-appearing series back-filled with
// NaN, resume truncation, flushed rows surviving a SIGKILL, and h5py reading the file live.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "checkpoints/hdf5_util.h"
#include "checkpoints/routing_log.h"

using namespace moe;
namespace fs = std::filesystem;

namespace {

struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& tag) {
    path = fs::temp_directory_path() / ("moe_rlog_" + tag + "_" + std::to_string(::getpid()));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

constexpr int64_t kE = 5;

// Deterministic, distinguishable numbers for (layer, step, expert); `salt` tells runs apart.
double load_of(int layer, int64_t step, int64_t e, double salt = 0) {
  return double(layer * 1000 + step * 10 + e) + salt;
}

RoutingRecord record(int layer, int64_t step, double salt = 0) {
  RoutingRecord r;
  for (int64_t e = 0; e < kE; ++e) r.load.push_back(load_of(layer, step, e, salt));
  r.dropped = double(step % 3);
  r.maxvio = 0.01 * double(step) + salt;
  r.router_entropy = 1.5 - 0.001 * double(step);
  return r;
}

std::vector<double> read_f64(const h5::File& f, const std::string& p) { return f.read<double>(p); }

}  // namespace

TEST(RoutingLog, AppendsRowsAndReadsBackThroughHdf5) {
  TempDir tmp("append");
  fs::path file = tmp.path / "routing.h5";
  RoutingLog log;
  log.open(file, {1, 3}, kE, std::nullopt, {.flush_every = 3});
  for (int64_t i = 0; i < 7; ++i) {
    int64_t step = 10 * (i + 1);
    RoutingRecord a = record(1, step), b = record(3, step);
    if (i >= 2) a.state = {0.1 * double(i), 0.2, 0.3, 0.4, 0.5};  // the strategy reports state from row 2
    a.scalars["load_cv"] = 0.5 + double(i);
    b.scalars["load_cv"] = 1.5 + double(i);
    if (i >= 4) b.scalars["aux_loss"] = 0.25 * double(i);  // a series that appears late
    log.append(step, {a, b});
    if (step == 30 || step == 60) {
      log.append_eval(step, "maxvio_global", 0.1 * double(step));
      log.append_eval(step, "genre_load/press", {1, 2, 3, 4, double(step)});
    }
  }
  EXPECT_EQ(log.rows(), 7);
  EXPECT_EQ(log.last_step(), 70);
  log.close();
  EXPECT_FALSE(log.is_open());

  h5::File f = h5::File::open(file, h5::File::Mode::read);
  EXPECT_EQ(f.attr_int("/", "num_experts"), kE);
  EXPECT_EQ(f.read<int64_t>("/steps"), (std::vector<int64_t>{10, 20, 30, 40, 50, 60, 70}));
  EXPECT_TRUE(f.info("/layer_1/load").fletcher32);
  EXPECT_EQ(f.info("/layer_1/load").shape, (std::vector<int64_t>{7, kE}));
  auto load3 = read_f64(f, "/layer_3/load");
  for (int64_t i = 0; i < 7; ++i)
    for (int64_t e = 0; e < kE; ++e) EXPECT_EQ(load3[size_t(i * kE + e)], load_of(3, 10 * (i + 1), e));
  auto mv = read_f64(f, "/layer_1/maxvio");
  auto dr = read_f64(f, "/layer_1/dropped");
  auto en = read_f64(f, "/layer_3/router_entropy");
  ASSERT_EQ(mv.size(), 7u);
  for (int64_t i = 0; i < 7; ++i) {
    EXPECT_DOUBLE_EQ(mv[size_t(i)], 0.01 * double(10 * (i + 1)));
    EXPECT_EQ(dr[size_t(i)], double((10 * (i + 1)) % 3));
    EXPECT_DOUBLE_EQ(en[size_t(i)], 1.5 - 0.001 * double(10 * (i + 1)));
  }
  auto st = read_f64(f, "/layer_1/balancer_state");
  ASSERT_EQ(st.size(), size_t(7 * kE));
  for (int64_t i = 0; i < 2 * kE; ++i) EXPECT_TRUE(std::isnan(st[size_t(i)]));
  EXPECT_DOUBLE_EQ(st[size_t(2 * kE)], 0.2);
  EXPECT_DOUBLE_EQ(st[size_t(6 * kE + 4)], 0.5);
  EXPECT_FALSE(f.exists("/layer_3/balancer_state"));
  auto aux = read_f64(f, "/layer_3/aux_loss");
  ASSERT_EQ(aux.size(), 7u);
  for (int i = 0; i < 4; ++i) EXPECT_TRUE(std::isnan(aux[size_t(i)]));
  EXPECT_DOUBLE_EQ(aux[6], 1.5);
  EXPECT_DOUBLE_EQ(read_f64(f, "/layer_3/load_cv")[6], 7.5);
  EXPECT_EQ(f.read<int64_t>("/eval/maxvio_global/steps"), (std::vector<int64_t>{30, 60}));
  EXPECT_EQ(f.info("/eval/maxvio_global/values").shape, (std::vector<int64_t>{2}));
  EXPECT_EQ(read_f64(f, "/eval/genre_load/press/values"), (std::vector<double>{1, 2, 3, 4, 30, 1, 2, 3, 4, 60}));

  // The plain C API sees the same thing (no wrapper between).
  hid_t fid = H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  ASSERT_GE(fid, 0);
  hid_t d = H5Dopen2(fid, "/layer_1/load", H5P_DEFAULT);
  ASSERT_GE(d, 0);
  std::vector<double> raw(size_t(7 * kE));
  EXPECT_GE(H5Dread(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, raw.data()), 0);
  EXPECT_EQ(raw[size_t(3 * kE + 2)], load_of(1, 40, 2));
  H5Dclose(d);
  H5Fclose(fid);
}

TEST(RoutingLog, ResumeDropsRowsLoggedAfterTheResumeStep) {
  TempDir tmp("resume");
  fs::path file = tmp.path / "routing.h5";
  {
    RoutingLog log;
    log.open(file, {0}, kE, std::nullopt, {.flush_every = 4});
    for (int64_t s = 1; s <= 10; ++s) {
      RoutingRecord r = record(0, s);
      if (s >= 8) r.scalars["late"] = double(s);  // first seen after the resume point
      log.append(s, {r});
      if (s % 4 == 0) log.append_eval(s, "val_loss", 10.0 - double(s));
    }
  }  // the destructor flushes and closes
  std::ostringstream msgs;
  RoutingLog log;
  log.open(file, {0}, kE, int64_t(6), {.flush_every = 4, .log = &msgs});
  EXPECT_EQ(log.rows(), 6);
  EXPECT_EQ(log.last_step(), 6);
  EXPECT_TRUE(msgs.str().empty()) << msgs.str();
  EXPECT_THROW(log.append(6, {record(0, 6)}), Error);  // already logged
  for (int64_t s = 7; s <= 9; ++s) {
    RoutingRecord r = record(0, s, 0.5);
    if (s == 9) r.scalars["late"] = 90;
    log.append(s, {r});
  }
  log.append_eval(8, "val_loss", -1.0);
  log.close();

  h5::File f = h5::File::open(file, h5::File::Mode::read);
  EXPECT_EQ(f.read<int64_t>("/steps"), (std::vector<int64_t>{1, 2, 3, 4, 5, 6, 7, 8, 9}));
  auto load = read_f64(f, "/layer_0/load");
  ASSERT_EQ(load.size(), size_t(9 * kE));
  EXPECT_EQ(load[size_t(5 * kE + 1)], load_of(0, 6, 1));       // kept from the first run
  EXPECT_EQ(load[size_t(6 * kE + 1)], load_of(0, 7, 1, 0.5));  // rewritten by the resumed run
  EXPECT_EQ(load[size_t(8 * kE + 4)], load_of(0, 9, 4, 0.5));
  auto late = read_f64(f, "/layer_0/late");
  ASSERT_EQ(late.size(), 9u);
  for (int i = 0; i < 8; ++i) EXPECT_TRUE(std::isnan(late[size_t(i)])) << i;  // step 8's 8.0 is gone
  EXPECT_EQ(late[8], 90);
  EXPECT_EQ(f.read<int64_t>("/eval/val_loss/steps"), (std::vector<int64_t>{4, 8}));
  EXPECT_EQ(read_f64(f, "/eval/val_loss/values"), (std::vector<double>{6.0, -1.0}));
}

TEST(RoutingLog, FlushedRowsSurviveSigkill) {
  TempDir tmp("crash");
  fs::path file = tmp.path / "routing.h5";
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    try {
      RoutingLog log;
      log.open(file, {2}, kE, std::nullopt, {.flush_every = 5});
      for (int64_t s = 1; s <= 13; ++s) log.append(s, {record(2, s)});
      ::raise(SIGKILL);  // never closes: rows 11..13 were only buffered
    } catch (...) {
      ::_exit(3);
    }
    ::_exit(4);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFSIGNALED(status)) << "child exit " << WEXITSTATUS(status);
  {
    h5::File f = h5::File::open(file, h5::File::Mode::read);
    EXPECT_EQ(f.read<int64_t>("/steps"), (std::vector<int64_t>{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}));
    EXPECT_EQ(read_f64(f, "/layer_2/load")[size_t(9 * kE)], load_of(2, 10, 0));
  }
  // Resuming from a checkpoint at step 12 finds the log short and says so.
  std::ostringstream msgs;
  RoutingLog log;
  log.open(file, {2}, kE, int64_t(12), {.log = &msgs});
  EXPECT_EQ(log.rows(), 10);
  EXPECT_NE(msgs.str().find("ends at step 10, resuming at 12"), std::string::npos) << msgs.str();
}

TEST(RoutingLog, BadInputsFailClearlyAndCorruptLogIsMovedAside) {
  TempDir tmp("bad");
  fs::path file = tmp.path / "routing.h5";
  RoutingLog log;
  log.open(file, {1, 2}, kE);
  try {
    RoutingRecord bad = record(2, 1);
    bad.load.pop_back();
    log.append(1, {record(1, 1), bad});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("layer_2 load has 4 values, expected 5"), std::string::npos) << e.what();
  }
  EXPECT_EQ(log.rows(), 0);  // nothing of the bad step was buffered
  EXPECT_THROW(log.append(1, {record(1, 1)}), Error);
  log.append(5, {record(1, 5), record(2, 5)});
  EXPECT_THROW(log.append(5, {record(1, 5), record(2, 5)}), Error);
  RoutingRecord reserved = record(1, 6);
  reserved.scalars["load"] = 1;
  EXPECT_THROW(log.append(6, {reserved, record(2, 6)}), Error);
  log.append_eval(5, "x", {1.0, 2.0});
  EXPECT_THROW(log.append_eval(6, "x", {1.0}), Error);
  EXPECT_THROW(log.append_eval(6, "x", 1.0), Error);
  log.close();

  // Garbage where the log should be: resume moves it aside and starts a new log.
  { std::ofstream(file, std::ios::trunc) << "this is not HDF5"; }
  std::ostringstream msgs;
  log.open(file, {1, 2}, kE, int64_t(5), {.log = &msgs});
  EXPECT_NE(msgs.str().find("moved to " + file.string() + ".corrupt"), std::string::npos) << msgs.str();
  EXPECT_TRUE(fs::exists(file.string() + ".corrupt"));
  log.append(6, {record(1, 6), record(2, 6)});
  log.close();
  h5::File f = h5::File::open(file, h5::File::Mode::read);
  EXPECT_EQ(f.read<int64_t>("/steps"), (std::vector<int64_t>{6}));
}

TEST(RoutingLog, H5pyReadsTheLogWhileOpenAndAfterClose) {
  TempDir tmp("h5py");
  fs::path file = tmp.path / "routing.h5";
  RoutingLog log;
  log.open(file, {1}, kE, std::nullopt, {.flush_every = 100});
  for (int64_t s = 1; s <= 6; ++s) {
    RoutingRecord r = record(1, s);
    r.state = {1, 2, 3, 4, 5};
    r.scalars["dead_experts"] = 0;
    log.append(s, {r});
  }
  log.append_eval(6, "maxvio_global", 0.75);
  log.flush();
  auto py = [&](int rows, bool quiet = false) {
    std::ostringstream cmd;
    cmd << "/usr/bin/python3 -c '\n"
        << "import h5py, numpy as np\n"
        << "f = h5py.File(\"" << file.string() << "\", \"r\")\n"
        << "assert list(f[\"steps\"][:]) == list(range(1, " << rows + 1 << ")), f[\"steps\"][:]\n"
        << "load = f[\"layer_1/load\"][:]\n"
        << "assert load.shape == (" << rows << ", " << kE << "), load.shape\n"
        << "assert load[2, 3] == 1000 + 30 + 3, load[2, 3]\n"
        << "assert f[\"layer_1/balancer_state\"].shape == (" << rows << ", " << kE << ")\n"
        << "assert np.all(f[\"layer_1/dead_experts\"][:6] == 0)\n"
        << "assert np.allclose(f[\"layer_1/maxvio\"][:], 0.01 * np.arange(1, " << rows + 1 << "))\n"
        << "assert f[\"eval/maxvio_global/values\"][0] == 0.75\n"
        << "assert f.attrs[\"num_experts\"] == " << kE << "\n"
        << "'" << (quiet ? " 2>/dev/null" : "");
    return std::system(cmd.str().c_str());
  };
  EXPECT_EQ(py(6), 0) << "h5py could not read the live log";
  log.append(7, {record(1, 7)});
  log.close();
  EXPECT_EQ(py(7), 0) << "h5py could not read the closed log";
  EXPECT_NE(py(8, true), 0);  // the check itself can fail
}
