// Collectives between training processes: the Communicator interface, its MPI backend (host
// buffers) and a single-process backend, and the MPI start-up / shut-down of build/moetrain.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace moe {

// Every collective must be called by every rank of the communicator, in the same order, with
// the same element counts (alltoallv: matching send / receive counts). Sums are computed by the
// backend in a fixed order, so every rank gets bit-identical results.
class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string backend() const = 0;
  // True when collectives take device (cuda) pointers in place (NCCL); else buffers are host
  // memory and device data is staged through the host.
  virtual bool takes_device_buffers() const { return false; }

  virtual void all_reduce_sum(double* data, size_t n) = 0;
  virtual void all_reduce_sum(float* data, size_t n) = 0;
  virtual void all_reduce_max(double* data, size_t n) = 0;
  // Sum, then divide by size() on the host; backends on device memory (NCCL) override.
  virtual void all_reduce_avg(double* data, size_t n);
  virtual void all_reduce_avg(float* data, size_t n);
  void all_reduce_sum(std::vector<double>& v) { all_reduce_sum(v.data(), v.size()); }
  void all_reduce_avg(std::vector<double>& v) { all_reduce_avg(v.data(), v.size()); }

  // Concatenation in rank order of every rank's `count` values.
  virtual std::vector<double> all_gather(const double* data, size_t count) = 0;
  virtual std::vector<uint64_t> all_gather(const uint64_t* data, size_t count) = 0;
  // Concatenation in rank order of every rank's `count` values, on `root` only (the other
  // ranks get an empty vector): checkpoints collect expert slices. The default is an all_gather
  // of doubles that only root keeps; MPI overrides it with MPI_Gather.
  virtual std::vector<float> gather(const float* data, size_t count, int root);
  virtual std::vector<double> gather(const double* data, size_t count, int root);
  // root's n values to every rank.
  virtual void broadcast(double* data, size_t n, int root) = 0;
  virtual void broadcast(uint64_t* data, size_t n, int root) = 0;
  // Sends send_counts[p] consecutive values of `send` to peer p (in peer order) and receives
  // recv_counts[p] values from peer p into `recv` (in peer order). recv must hold their sum.
  virtual void alltoallv(const float* send, const std::vector<int64_t>& send_counts, float* recv,
                         const std::vector<int64_t>& recv_counts) = 0;
  virtual void alltoallv(const double* send, const std::vector<int64_t>& send_counts, double* recv,
                         const std::vector<int64_t>& recv_counts) = 0;
  // The same for 16-bit values (bf16 activation rows of expert parallelism), moved as bits: no
  // arithmetic touches them, and half the bytes of widening to fp32. The default refuses
  // (backends that have it: self, MPI as MPI_UINT16_T, NCCL).
  virtual void alltoallv(const uint16_t* send, const std::vector<int64_t>& send_counts, uint16_t* recv,
                         const std::vector<int64_t>& recv_counts);
  virtual void barrier() = 0;
  // Ranks with the same color form a sub-communicator, ordered by key (then by rank here).
  virtual std::shared_ptr<Communicator> split(int color, int key) = 0;
};

// A world of one process: every collective is the identity (no MPI involved).
std::shared_ptr<Communicator> make_self_communicator();

// MPI_COMM_WORLD as a Communicator when MPI is initialized (mpi_init below), else the
// single-process communicator.
std::shared_ptr<Communicator> world_communicator();

// The communicator for data on the cuda device between the ranks of `host` (the MPI world): the
// registered factory's (the CLI registers NCCL when built with it), else `host` itself, whose
// collectives then go through host copies. A world of one returns `host`; so does
// MOE_DEVICE_COMM=mpi in the environment (ranks that share one GPU, which NCCL refuses).
using DeviceCommunicatorFactory = std::shared_ptr<Communicator> (*)(std::shared_ptr<Communicator> host);
void register_device_communicator_factory(DeviceCommunicatorFactory factory);
std::shared_ptr<Communicator> make_device_communicator(std::shared_ptr<Communicator> host);

// MPI start-up for `moetrain train`: MPI_Init_thread (MPI_THREAD_FUNNELED: only the main thread
// calls MPI; OpenMP threads never do). Called without a launcher, OpenMPI starts a singleton world
// of one rank (the MPI tests rely on it). mpi_finalize is a no-op unless mpi_init initialized MPI.
bool mpi_init(int* argc, char*** argv);
// True when this process was started by an MPI launcher (mpirun / srun set OMPI_COMM_WORLD_SIZE,
// PMIX_RANK or PMI_RANK). `moetrain train` initializes MPI only then: a world of one needs no
// MPI, and a machine with a copied binary but without OpenMPI's components can still train.
bool launched_by_mpi_launcher();
// This process's rank among the job's processes on its node (OMPI_COMM_WORLD_LOCAL_RANK), or
// `fallback` when the launcher did not say: the GPU a rank takes is this modulo the device count.
int node_local_rank(int fallback);
void mpi_finalize();
bool mpi_active();
// Ends every rank of the job (MPI_Abort) after an error on this rank, so that no peer waits
// forever in a collective; no-op without MPI or with one rank.
void mpi_abort_job(int code);

}  // namespace moe
