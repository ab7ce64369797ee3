// The single-process and MPI backends of Communicator, and MPI start-up / abort for the CLI.
// MPI errors are returned (MPI_ERRORS_RETURN) and turned into moe::Error naming the call.
#include "parallel/communicator.h"

// C API only: the deprecated C++ bindings need libmpi_cxx, which nothing links.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <cstdlib>
#include <mpi.h>

#include <algorithm>
#include <cstring>
#include <numeric>

#include "core/error.h"

namespace moe {

void Communicator::all_reduce_avg(double* data, size_t n) {
  all_reduce_sum(data, n);
  const double inv = 1.0 / double(size());
  for (size_t i = 0; i < n; ++i) data[i] *= inv;
}

void Communicator::all_reduce_avg(float* data, size_t n) {
  all_reduce_sum(data, n);
  const float inv = 1.0f / float(size());
  for (size_t i = 0; i < n; ++i) data[i] *= inv;
}

std::vector<double> Communicator::gather(const double* data, size_t count, int root) {
  MOE_CHECK(root >= 0 && root < size(), "Communicator.gather", "root ", root, " outside a world of ", size(), " ranks");
  std::vector<double> all = all_gather(data, count);
  if (rank() != root) all.clear();
  return all;
}

std::vector<float> Communicator::gather(const float* data, size_t count, int root) {
  std::vector<double> in(data, data + count);
  std::vector<double> all = gather(in.data(), count, root);
  return {all.begin(), all.end()};
}

void Communicator::alltoallv(const uint16_t*, const std::vector<int64_t>&, uint16_t*, const std::vector<int64_t>&) {
  MOE_FAIL("Communicator.alltoallv", "the ", backend(), " communicator has no alltoallv of 16-bit values");
}

namespace {

class SelfCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string backend() const override { return "self"; }
  void all_reduce_sum(double*, size_t) override {}
  void all_reduce_sum(float*, size_t) override {}
  void all_reduce_max(double*, size_t) override {}
  std::vector<double> all_gather(const double* d, size_t n) override { return {d, d + n}; }
  std::vector<uint64_t> all_gather(const uint64_t* d, size_t n) override { return {d, d + n}; }
  std::vector<float> gather(const float* d, size_t n, int root) override {
    check_root(root);
    return {d, d + n};
  }
  std::vector<double> gather(const double* d, size_t n, int root) override {
    check_root(root);
    return {d, d + n};
  }
  void broadcast(double*, size_t, int root) override { check_root(root); }
  void broadcast(uint64_t*, size_t, int root) override { check_root(root); }
  void alltoallv(const float* s, const std::vector<int64_t>& sc, float* r, const std::vector<int64_t>& rc) override {
    copy_self(s, sc, r, rc);
  }
  void alltoallv(const double* s, const std::vector<int64_t>& sc, double* r, const std::vector<int64_t>& rc) override {
    copy_self(s, sc, r, rc);
  }
  void alltoallv(const uint16_t* s, const std::vector<int64_t>& sc, uint16_t* r, const std::vector<int64_t>& rc) override {
    copy_self(s, sc, r, rc);
  }
  void barrier() override {}
  std::shared_ptr<Communicator> split(int, int) override { return std::make_shared<SelfCommunicator>(); }

 private:
  static void check_root(int root) {
    MOE_CHECK(root == 0, "Communicator", "root ", root, " outside a world of 1 rank");
  }
  template <class T>
  static void copy_self(const T* s, const std::vector<int64_t>& sc, T* r, const std::vector<int64_t>& rc) {
    MOE_CHECK(sc.size() == 1 && rc.size() == 1 && sc[0] == rc[0] && sc[0] >= 0, "Communicator.alltoallv",
              "a world of 1 rank needs one send count equal to the one receive count");
    std::copy(s, s + sc[0], r);
  }
};

void check_mpi(int rc, const char* call) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  throw Error(std::string(call) + " failed: " + std::string(msg, size_t(len)));
}

template <class T>
MPI_Datatype mpi_type();
template <>
MPI_Datatype mpi_type<double>() { return MPI_DOUBLE; }
template <>
MPI_Datatype mpi_type<float>() { return MPI_FLOAT; }
template <>
MPI_Datatype mpi_type<uint64_t>() { return MPI_UINT64_T; }
template <>
MPI_Datatype mpi_type<uint16_t>() { return MPI_UINT16_T; }

// MPI counts are int: large buffers go in chunks below 2^30 elements.
constexpr size_t kMaxChunk = size_t(1) << 30;

class MpiCommunicator final : public Communicator {
 public:
  // Takes ownership of comm (freed in the destructor) unless it is MPI_COMM_WORLD.
  explicit MpiCommunicator(MPI_Comm comm) : comm_(comm) {
    check_mpi(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
    check_mpi(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
    check_mpi(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
  }
  ~MpiCommunicator() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (comm_ != MPI_COMM_WORLD && !finalized) MPI_Comm_free(&comm_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "mpi"; }

  void all_reduce_sum(double* d, size_t n) override { reduce(d, n, MPI_SUM); }
  void all_reduce_sum(float* d, size_t n) override { reduce(d, n, MPI_SUM); }
  void all_reduce_max(double* d, size_t n) override { reduce(d, n, MPI_MAX); }
  std::vector<double> all_gather(const double* d, size_t n) override { return gather(d, n); }
  std::vector<uint64_t> all_gather(const uint64_t* d, size_t n) override { return gather(d, n); }
  std::vector<float> gather(const float* d, size_t n, int root) override { return gather_to(d, n, root); }
  std::vector<double> gather(const double* d, size_t n, int root) override { return gather_to(d, n, root); }
  void broadcast(double* d, size_t n, int root) override { bcast(d, n, root); }
  void broadcast(uint64_t* d, size_t n, int root) override { bcast(d, n, root); }
  void alltoallv(const float* s, const std::vector<int64_t>& sc, float* r, const std::vector<int64_t>& rc) override {
    a2av(s, sc, r, rc);
  }
  void alltoallv(const double* s, const std::vector<int64_t>& sc, double* r, const std::vector<int64_t>& rc) override {
    a2av(s, sc, r, rc);
  }
  void alltoallv(const uint16_t* s, const std::vector<int64_t>& sc, uint16_t* r, const std::vector<int64_t>& rc) override {
    a2av(s, sc, r, rc);
  }
  void barrier() override { check_mpi(MPI_Barrier(comm_), "MPI_Barrier"); }
  std::shared_ptr<Communicator> split(int color, int key) override {
    MOE_CHECK(color >= 0, "Communicator.split", "color must be >= 0, got ", color);
    MPI_Comm sub;
    check_mpi(MPI_Comm_split(comm_, color, key, &sub), "MPI_Comm_split");
    return std::make_shared<MpiCommunicator>(sub);
  }

 private:
  // MPI_Allreduce of the built-in ops is not guaranteed to sum in rank order, but OpenMPI's
  // algorithms are deterministic for a fixed size and count, and every rank receives the
  // same bits, which is what keeps the ranks' parameters identical.
  template <class T>
  void reduce(T* d, size_t n, MPI_Op op) {
    for (size_t off = 0; off < n; off += kMaxChunk) {
      int c = int(std::min(kMaxChunk, n - off));
      check_mpi(MPI_Allreduce(MPI_IN_PLACE, d + off, c, mpi_type<T>(), op, comm_), "MPI_Allreduce");
    }
  }
  template <class T>
  std::vector<T> gather(const T* d, size_t n) {
    MOE_CHECK(n < kMaxChunk, "Communicator.all_gather", "count ", n, " too large for one call");
    std::vector<T> out(n * size_t(size_));
    check_mpi(MPI_Allgather(d, int(n), mpi_type<T>(), out.data(), int(n), mpi_type<T>(), comm_), "MPI_Allgather");
    return out;
  }
  template <class T>
  std::vector<T> gather_to(const T* d, size_t n, int root) {
    MOE_CHECK(root >= 0 && root < size_, "Communicator.gather", "root ", root, " outside a world of ", size_, " ranks");
    MOE_CHECK(n < kMaxChunk, "Communicator.gather", "count ", n, " too large for one call");
    std::vector<T> out(rank_ == root ? n * size_t(size_) : 0);
    check_mpi(MPI_Gather(d, int(n), mpi_type<T>(), out.data(), int(n), mpi_type<T>(), root, comm_), "MPI_Gather");
    return out;
  }
  template <class T>
  void bcast(T* d, size_t n, int root) {
    MOE_CHECK(root >= 0 && root < size_, "Communicator.broadcast", "root ", root, " outside a world of ", size_,
              " ranks");
    for (size_t off = 0; off < n; off += kMaxChunk)
      check_mpi(MPI_Bcast(d + off, int(std::min(kMaxChunk, n - off)), mpi_type<T>(), root, comm_), "MPI_Bcast");
  }
  template <class T>
  void a2av(const T* s, const std::vector<int64_t>& sc, T* r, const std::vector<int64_t>& rc) {
    MOE_CHECK(sc.size() == size_t(size_) && rc.size() == size_t(size_), "Communicator.alltoallv", "expected ", size_,
              " send and receive counts, got ", sc.size(), " and ", rc.size());
    const size_t np = size_t(size_);
    std::vector<int> scount(np), sdisp(np), rcount(np), rdisp(np);
    int64_t so = 0, ro = 0;
    for (size_t p = 0; p < size_t(size_); ++p) {
      MOE_CHECK(sc[p] >= 0 && rc[p] >= 0, "Communicator.alltoallv", "negative count for peer ", p);
      scount[p] = int(sc[p]);
      rcount[p] = int(rc[p]);
      sdisp[p] = int(so);
      rdisp[p] = int(ro);
      so += sc[p];
      ro += rc[p];
      MOE_CHECK(so < int64_t(kMaxChunk) && ro < int64_t(kMaxChunk), "Communicator.alltoallv", "counts too large");
    }
    check_mpi(MPI_Alltoallv(s, scount.data(), sdisp.data(), mpi_type<T>(), r, rcount.data(), rdisp.data(), mpi_type<T>(),
                            comm_),
              "MPI_Alltoallv");
  }

  MPI_Comm comm_;
  int rank_ = 0, size_ = 1;
};

bool g_we_initialized = false;

}  // namespace

std::shared_ptr<Communicator> make_self_communicator() { return std::make_shared<SelfCommunicator>(); }

bool mpi_active() {
  int init = 0, fin = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  return init && !fin;
}

namespace {
DeviceCommunicatorFactory g_device_communicator_factory = nullptr;
}  // namespace

void register_device_communicator_factory(DeviceCommunicatorFactory factory) {
  g_device_communicator_factory = factory;
}

std::shared_ptr<Communicator> make_device_communicator(std::shared_ptr<Communicator> host) {
  if (host->size() == 1 || !g_device_communicator_factory) return host;
  // Host staging on request: ranks sharing one GPU (NCCL refuses that), or a check without NCCL.
  if (const char* choice = std::getenv("MOE_DEVICE_COMM"); choice && std::string(choice) == "mpi") return host;
  return g_device_communicator_factory(std::move(host));
}

std::shared_ptr<Communicator> world_communicator() {
  if (!mpi_active()) return make_self_communicator();
  return std::make_shared<MpiCommunicator>(MPI_COMM_WORLD);
}

bool mpi_init(int* argc, char*** argv) {
  if (mpi_active()) return true;
  int provided = 0;
  check_mpi(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
  g_we_initialized = true;
  MOE_CHECK(provided >= MPI_THREAD_FUNNELED, "MPI_Init_thread", "the MPI library gives thread level ", provided,
            ", moetrain needs MPI_THREAD_FUNNELED");
  return true;
}

bool launched_by_mpi_launcher() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK"})
    if (std::getenv(v)) return true;
  return false;
}

int node_local_rank(int fallback) {
  const char* local = std::getenv("OMPI_COMM_WORLD_LOCAL_RANK");
  return local ? std::atoi(local) : fallback;
}

void mpi_finalize() {
  if (g_we_initialized && mpi_active()) MPI_Finalize();
  g_we_initialized = false;
}

void mpi_abort_job(int code) {
  if (!mpi_active()) return;
  int size = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (size > 1) MPI_Abort(MPI_COMM_WORLD, code);
}

}  // namespace moe
