// The NCCL backend under mpirun (ctest nccl_np1 / nccl_np2, label gpu): every collective against
// hand-computed values, on device and on host buffers; exits 77 (skipped) without a GPU per rank.
#include <gtest/gtest.h>
// C API only: the deprecated C++ bindings need libmpi_cxx, which nothing links.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <cuda_runtime.h>
#include <mpi.h>

#include <cstdio>
#include <numeric>

#include "core/error.h"
#include "parallel/nccl_communicator.h"

using namespace moe;

namespace {

std::shared_ptr<NcclCommunicator> g_comm;

// A device copy of host values, freed at scope end.
template <class T>
struct DeviceBuffer {
  T* ptr = nullptr;
  size_t n = 0;
  explicit DeviceBuffer(const std::vector<T>& v) : n(v.size()) {
    EXPECT_EQ(cudaMalloc(&ptr, std::max<size_t>(1, n) * sizeof(T)), cudaSuccess);
    if (n) {
      EXPECT_EQ(cudaMemcpy(ptr, v.data(), n * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
    }
  }
  explicit DeviceBuffer(size_t count) : DeviceBuffer(std::vector<T>(count, T(0))) {}
  ~DeviceBuffer() { cudaFree(ptr); }
  std::vector<T> host() const {
    std::vector<T> v(n);
    if (n) {
      EXPECT_EQ(cudaMemcpy(v.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    }
    return v;
  }
};

}  // namespace

TEST(Nccl, AllReduceSumAvgMaxOnDeviceAndHostBuffers) {
  Communicator& c = *g_comm;
  const int W = c.size(), r = c.rank();
  const size_t n = 1000003;  // odd, and large enough for NCCL to split it into chunks
  std::vector<double> x(n);
  for (size_t i = 0; i < n; ++i) x[i] = double(r + 1) * double(i % 97);
  const double tri = double(W) * double(W + 1) / 2.0;  // sum over ranks of (r + 1)
  DeviceBuffer<double> d(x);
  c.all_reduce_sum(d.ptr, n);
  std::vector<double> got = d.host();
  for (size_t i = 0; i < n; i += 4999) ASSERT_EQ(got[i], tri * double(i % 97)) << i;

  std::vector<float> f = {float(r + 1), -2.5f * float(r), 7.0f};
  DeviceBuffer<float> df(f);
  c.all_reduce_avg(df.ptr, f.size());
  std::vector<float> avg = df.host();
  EXPECT_FLOAT_EQ(avg[0], float(tri / W));
  EXPECT_FLOAT_EQ(avg[1], -2.5f * float(W - 1) / 2.0f);
  EXPECT_FLOAT_EQ(avg[2], 7.0f);

  std::vector<double> m = {double(r), -double(r), 3.0};
  DeviceBuffer<double> dm(m);
  c.all_reduce_max(dm.ptr, m.size());
  EXPECT_EQ(dm.host(), (std::vector<double>{double(W - 1), 0.0, 3.0}));

  // Host memory takes the staged path, with the same results.
  std::vector<double> h = {double(r + 1), 1.0};
  c.all_reduce_sum(h);
  EXPECT_EQ(h, (std::vector<double>{tri, double(W)}));
  std::vector<double> ha = {double(r + 1)};
  c.all_reduce_avg(ha);
  EXPECT_DOUBLE_EQ(ha[0], tri / W);
}

TEST(Nccl, AllGatherInRankOrder) {
  NcclCommunicator& c = *g_comm;
  const int W = c.size(), r = c.rank();
  std::vector<double> mine = {10.0 * r, 10.0 * r + 1, 10.0 * r + 2};
  DeviceBuffer<double> d(mine);
  std::vector<double> want;
  for (int q = 0; q < W; ++q)
    for (int i = 0; i < 3; ++i) want.push_back(10.0 * q + i);
  EXPECT_EQ(c.all_gather(d.ptr, 3), want);        // device in, host out
  EXPECT_EQ(c.all_gather(mine.data(), 3), want);  // host in, host out
  DeviceBuffer<double> out(size_t(3 * W));
  c.all_gather_device(d.ptr, 3, out.ptr);  // device to device
  EXPECT_EQ(out.host(), want);
  const uint64_t big = (uint64_t(1) << 60) + uint64_t(r);  // not representable as a double
  std::vector<uint64_t> u = c.all_gather(&big, 1);
  ASSERT_EQ(u.size(), size_t(W));
  for (int q = 0; q < W; ++q) EXPECT_EQ(u[size_t(q)], (uint64_t(1) << 60) + uint64_t(q));
}

TEST(Nccl, BroadcastFromTheLastRank) {
  Communicator& c = *g_comm;
  const int W = c.size(), r = c.rank();
  std::vector<double> v = {double(r), double(r) * 2 + 1};
  DeviceBuffer<double> d(v);
  c.broadcast(d.ptr, 2, W - 1);
  EXPECT_EQ(d.host(), (std::vector<double>{double(W - 1), double(W - 1) * 2 + 1}));
  std::vector<uint64_t> w = {uint64_t(r) + 5};
  c.broadcast(w.data(), 1, W - 1);  // host buffer
  EXPECT_EQ(w[0], uint64_t(W - 1) + 5);
  try {
    c.broadcast(w.data(), 1, W);
    ADD_FAILURE() << "root outside the world accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("root " + std::to_string(W)), std::string::npos) << e.what();
  }
}

TEST(Nccl, AlltoallvWithUnequalCounts) {
  Communicator& c = *g_comm;
  const int W = c.size(), r = c.rank();
  // Rank r sends r + p + 1 values to peer p, value 1000 r + 100 p + i; so it receives
  // p + r + 1 values from peer p, value 1000 p + 100 r + i.
  std::vector<int64_t> sc(static_cast<size_t>(W)), rc(static_cast<size_t>(W));
  std::vector<float> send, want;
  std::vector<double> send_d;
  for (int p = 0; p < W; ++p) {
    sc[size_t(p)] = rc[size_t(p)] = r + p + 1;
    for (int i = 0; i < r + p + 1; ++i) {
      send.push_back(float(1000 * r + 100 * p + i));
      send_d.push_back(1000.0 * r + 100.0 * p + i);
      want.push_back(float(1000 * p + 100 * r + i));
    }
  }
  DeviceBuffer<float> ds(send), dr(want.size());
  c.alltoallv(ds.ptr, sc, dr.ptr, rc);
  EXPECT_EQ(dr.host(), want);
  std::vector<double> got(want.size());
  c.alltoallv(send_d.data(), sc, got.data(), rc);  // host buffers
  for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(got[i], double(want[i])) << i;
  try {
    c.alltoallv(ds.ptr, std::vector<int64_t>(size_t(W) + 1, 0), dr.ptr, rc);
    ADD_FAILURE() << "wrong number of counts accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("alltoallv"), std::string::npos) << e.what();
  }
}

TEST(Nccl, AlltoallvOf16BitValuesMovesTheBits) {
  // bf16 rows of expert parallelism travel as uint16_t; values that are NaN or subnormal as
  // fp16 (0x7e01, 0x0001) must arrive unchanged, since ncclFloat16 only carries them.
  Communicator& c = *g_comm;
  const int W = c.size(), r = c.rank();
  std::vector<int64_t> sc(static_cast<size_t>(W)), rc(static_cast<size_t>(W));
  std::vector<uint16_t> send, want;
  auto value = [](int from, int to, int i) { return uint16_t(i == 0 ? 0x7e01 : i == 1 ? 0x0001 : 1000 * from + 100 * to + i); };
  for (int p = 0; p < W; ++p) {
    sc[size_t(p)] = rc[size_t(p)] = r + p + 2;
    for (int i = 0; i < r + p + 2; ++i) {
      send.push_back(value(r, p, i));
      want.push_back(value(p, r, i));
    }
  }
  DeviceBuffer<uint16_t> ds(send), dr(want.size());
  c.alltoallv(ds.ptr, sc, dr.ptr, rc);
  EXPECT_EQ(dr.host(), want);
  std::vector<uint16_t> got(want.size());
  c.alltoallv(send.data(), sc, got.data(), rc);  // host buffers
  EXPECT_EQ(got, want);
}

TEST(Nccl, SplitWithAReversedKeyAndBarrier) {
  Communicator& c = *g_comm;
  const int W = c.size(), r = c.rank();
  auto sub = c.split(r % 2, -r);  // even and odd ranks, highest rank first
  int members = 0, position = 0;
  for (int q = 0; q < W; ++q)
    if (q % 2 == r % 2) {
      ++members;
      if (q > r) ++position;
    }
  EXPECT_EQ(sub->size(), members);
  EXPECT_EQ(sub->rank(), position);
  EXPECT_EQ(sub->backend(), "nccl");
  std::vector<double> v = {double(r)};
  DeviceBuffer<double> d(v);
  sub->all_reduce_sum(d.ptr, 1);
  double want = 0;
  for (int q = r % 2; q < W; q += 2) want += q;
  EXPECT_EQ(d.host()[0], want);
  sub->barrier();
  c.barrier();
}

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  int rank = 0, world = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  // One GPU per rank (NCCL refuses two ranks on one device): otherwise every rank skips.
  std::string why = nccl_device_unavailable_reason();
  int devices = 0;
  if (why.empty()) cudaGetDeviceCount(&devices);
  if (why.empty() && devices < world)
    why = std::to_string(devices) + " CUDA device(s) for " + std::to_string(world) + " ranks (NCCL needs one per rank)";
  int skip = why.empty() ? 0 : 1, any_skip = 0;
  MPI_Allreduce(&skip, &any_skip, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (any_skip) {
    if (rank == 0)
      std::printf("no CUDA device: %s; skipping the NCCL tests\n", why.empty() ? "on another rank" : why.c_str());
    MPI_Finalize();
    return 77;
  }
  ::testing::InitGoogleTest(&argc, argv);
  if (rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  int rc = 1;
  try {
    g_comm = make_nccl_communicator(world_communicator());
    if (rank == 0) std::printf("NCCL tests on %d rank(s), device %d of rank 0\n", world, g_comm->device());
    rc = RUN_ALL_TESTS();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rank %d: %s\n", rank, e.what());
  }
  g_comm.reset();
  int any = 0;
  MPI_Allreduce(&rc, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return any;
}
