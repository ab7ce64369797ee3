// Communicator collectives over MPI_COMM_WORLD against hand-computed values (any world size
// >= 2), sub-communicators, and the DP x EP process groups with their errors.
#include <gtest/gtest.h>

#include <numeric>

#include "core/error.h"
#include "parallel/communicator.h"
#include "parallel/process_groups.h"
#include "tests/forwarding_communicator.h"

using namespace moe;

namespace {

std::shared_ptr<Communicator> world() {
  auto w = world_communicator();
  EXPECT_EQ(w->backend(), "mpi");
  return w;
}

}  // namespace

TEST(MpiCommunicator, WorldHasSeveralRanks) {
  auto w = world();
  EXPECT_GE(w->size(), 2);
  EXPECT_GE(w->rank(), 0);
  EXPECT_LT(w->rank(), w->size());
}

TEST(MpiCommunicator, AllReduceSumAvgMaxDoubleAndFloat) {
  auto w = world();
  const int r = w->rank(), n = w->size();
  const double tri = double(n) * double(n + 1) / 2;  // sum over ranks of (r + 1)
  std::vector<double> d(7);
  std::vector<float> f(7);
  for (int i = 0; i < 7; ++i) {
    d[size_t(i)] = double(r + 1) * double(i + 1) + 0.25;
    f[size_t(i)] = float(r + 1) * float(i) - 1.5f;
  }
  std::vector<double> d_avg = d;
  std::vector<float> f_avg = f;
  w->all_reduce_sum(d.data(), d.size());
  w->all_reduce_sum(f.data(), f.size());
  w->all_reduce_avg(d_avg.data(), d_avg.size());
  w->all_reduce_avg(f_avg.data(), f_avg.size());
  for (int i = 0; i < 7; ++i) {
    EXPECT_DOUBLE_EQ(d[size_t(i)], tri * (i + 1) + 0.25 * n) << i;
    EXPECT_FLOAT_EQ(f[size_t(i)], float(tri * i - 1.5 * n)) << i;
    EXPECT_DOUBLE_EQ(d_avg[size_t(i)], (tri * (i + 1) + 0.25 * n) / n) << i;
    EXPECT_NEAR(f_avg[size_t(i)], (tri * i - 1.5 * n) / n, 1e-5) << i;
  }
  double m[2] = {double(r), -double(r)};
  w->all_reduce_max(m, 2);
  EXPECT_EQ(m[0], n - 1);
  EXPECT_EQ(m[1], 0);
}

TEST(MpiCommunicator, AllGatherInRankOrder) {
  auto w = world();
  const int r = w->rank(), n = w->size();
  double d[3] = {double(r), 10.0 * r, -1.0};
  std::vector<double> g = w->all_gather(d, 3);
  ASSERT_EQ(g.size(), size_t(3 * n));
  for (int q = 0; q < n; ++q) {
    EXPECT_EQ(g[size_t(3 * q)], q);
    EXPECT_EQ(g[size_t(3 * q + 1)], 10.0 * q);
    EXPECT_EQ(g[size_t(3 * q + 2)], -1.0);
  }
  uint64_t u = 1000 + uint64_t(r);
  std::vector<uint64_t> gu = w->all_gather(&u, 1);
  ASSERT_EQ(gu.size(), size_t(n));
  for (int q = 0; q < n; ++q) EXPECT_EQ(gu[size_t(q)], 1000u + uint64_t(q));
}

TEST(MpiCommunicator, GatherToTheLastRankOnly) {
  auto w = world();
  const int r = w->rank(), n = w->size(), root = n - 1;
  float f[2] = {float(r) + 0.5f, -float(r)};
  double d[3] = {double(r), 7.0 * r, 0.25};
  std::vector<float> gf = w->gather(f, 2, root);
  std::vector<double> gd = w->gather(d, 3, root);
  if (r != root) {
    EXPECT_TRUE(gf.empty());
    EXPECT_TRUE(gd.empty());
  } else {
    ASSERT_EQ(gf.size(), size_t(2 * n));
    ASSERT_EQ(gd.size(), size_t(3 * n));
    for (int q = 0; q < n; ++q) {
      EXPECT_EQ(gf[size_t(2 * q)], float(q) + 0.5f);
      EXPECT_EQ(gf[size_t(2 * q + 1)], -float(q));
      EXPECT_EQ(gd[size_t(3 * q)], q);
      EXPECT_EQ(gd[size_t(3 * q + 1)], 7.0 * q);
      EXPECT_EQ(gd[size_t(3 * q + 2)], 0.25);
    }
  }
  EXPECT_THROW(w->gather(d, 3, n), Error);
}

// A backend without its own gather (as NCCL): Communicator's default, an all_gather kept on root.
class GatherlessComm final : public test::ForwardingCommunicator {
 public:
  using ForwardingCommunicator::ForwardingCommunicator;
};

TEST(MpiCommunicator, DefaultGatherOfABackendWithoutOne) {
  GatherlessComm c(world());
  const int r = c.rank(), n = c.size();
  float f[2] = {float(r) - 0.25f, 3.0f * float(r)};
  std::vector<float> g = c.gather(f, 2, 0);
  if (r != 0) {
    EXPECT_TRUE(g.empty());
  } else {
    ASSERT_EQ(g.size(), size_t(2 * n));
    for (int q = 0; q < n; ++q) {
      EXPECT_EQ(g[size_t(2 * q)], float(q) - 0.25f);
      EXPECT_EQ(g[size_t(2 * q + 1)], 3.0f * float(q));
    }
  }
  EXPECT_THROW(c.gather(f, 2, -1), Error);
}

TEST(MpiCommunicator, BroadcastFromLastRank) {
  auto w = world();
  const int root = w->size() - 1;
  std::vector<double> d(5, double(w->rank()));
  if (w->rank() == root)
    for (int i = 0; i < 5; ++i) d[size_t(i)] = 3.5 * i;
  w->broadcast(d.data(), d.size(), root);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(d[size_t(i)], 3.5 * i);
  uint64_t u = w->rank() == root ? 77 : 0;
  w->broadcast(&u, 1, root);
  EXPECT_EQ(u, 77u);
  EXPECT_THROW(w->broadcast(&u, 1, w->size()), Error);
}

TEST(MpiCommunicator, AllToAllVWithUnequalCounts) {
  // Rank r sends p + r + 1 values to peer p; value i of that message is 100 r + p + i / 8.
  auto w = world();
  const int r = w->rank(), n = w->size();
  std::vector<int64_t> sc(static_cast<size_t>(n), 0), rc(static_cast<size_t>(n), 0);
  std::vector<double> send;
  std::vector<float> sendf;
  for (int p = 0; p < n; ++p) {
    sc[size_t(p)] = p + r + 1;
    rc[size_t(p)] = r + p + 1;  // what peer p sends to me
    for (int i = 0; i < p + r + 1; ++i) {
      send.push_back(100.0 * r + p + i / 8.0);
      sendf.push_back(float(100.0 * r + p + i / 8.0));
    }
  }
  int64_t total = std::accumulate(rc.begin(), rc.end(), int64_t(0));
  std::vector<double> recv(size_t(total), -1);
  std::vector<float> recvf(size_t(total), -1);
  w->alltoallv(send.data(), sc, recv.data(), rc);
  w->alltoallv(sendf.data(), sc, recvf.data(), rc);
  size_t o = 0;
  for (int p = 0; p < n; ++p)
    for (int i = 0; i < r + p + 1; ++i, ++o) {
      EXPECT_EQ(recv[o], 100.0 * p + r + i / 8.0) << "from " << p << " item " << i;
      EXPECT_EQ(recvf[o], float(100.0 * p + r + i / 8.0)) << "from " << p << " item " << i;
    }
  EXPECT_EQ(o, size_t(total));
  std::vector<int64_t> wrong(size_t(n + 1), 0);
  EXPECT_THROW(w->alltoallv(send.data(), wrong, recv.data(), rc), Error);
}

TEST(MpiCommunicator, SplitIntoSubCommunicators) {
  auto w = world();
  const int r = w->rank(), n = w->size();
  // color = parity; key reverses the order inside each group.
  auto sub = w->split(r % 2, n - r);
  int members = 0;
  for (int q = 0; q < n; ++q) members += (q % 2 == r % 2);
  EXPECT_EQ(sub->size(), members);
  int higher = 0;  // members of my color with a larger world rank come first (smaller key)
  for (int q = r + 1; q < n; ++q) higher += (q % 2 == r % 2);
  EXPECT_EQ(sub->rank(), higher);
  double x = double(r);
  sub->all_reduce_sum(&x, 1);
  double expect = 0;
  for (int q = 0; q < n; ++q)
    if (q % 2 == r % 2) expect += q;
  EXPECT_EQ(x, expect);
  w->barrier();
  sub->barrier();
}

TEST(MpiProcessGroups, LayoutAndErrorsNameTheKey) {
  ParallelLayout l = make_layout(4, 3, 2, 8, true);
  EXPECT_EQ(l.dp, 2);
  EXPECT_EQ(l.ep, 2);
  EXPECT_EQ(l.ep_rank, 1);
  EXPECT_EQ(l.dp_rank, 1);
  EXPECT_EQ(l.experts_per_rank, 4);
  try {
    make_layout(2, 0, 3, 6, true);
    ADD_FAILURE() << "ep 3 with world 2 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("parallel.ep"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("world size 2"), std::string::npos) << e.what();
  }
  try {
    make_layout(2, 0, 2, 5, true);
    ADD_FAILURE() << "ep 2 with 5 experts accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("parallel.ep"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("num_experts = 5"), std::string::npos) << e.what();
  }
  EXPECT_THROW(make_layout(2, 0, 2, 4, false), Error);
}

TEST(MpiProcessGroups, GroupsOverTheWorld) {
  auto w = world();
  const int n = w->size();
  ProcessGroups g1 = make_process_groups(w, 1, 4, true);
  EXPECT_EQ(g1.dp->size(), n);
  EXPECT_EQ(g1.ep->size(), 1);
  EXPECT_EQ(g1.dp->rank(), w->rank());
  if (n % 2 == 0) {
    ProcessGroups g2 = make_process_groups(w, 2, 4, true);
    EXPECT_EQ(g2.ep->size(), 2);
    EXPECT_EQ(g2.dp->size(), n / 2);
    EXPECT_EQ(g2.ep->rank(), w->rank() % 2);
    // the EP group sums its members' ranks: 2 * (r / 2) * 2 + 0 + 1
    double x = double(w->rank());
    g2.ep->all_reduce_sum(&x, 1);
    EXPECT_EQ(x, 4.0 * (w->rank() / 2) + 1);
  }
}
