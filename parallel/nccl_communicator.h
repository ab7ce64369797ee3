// The NCCL backend of Communicator: collectives on GPU buffers between the ranks that a host
// communicator (MPI) already connects. Built only with the CUDA toolkit (cmake/nccl.cmake).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "parallel/communicator.h"

namespace moe {

// Available to targets that link `moetrain_nccl` (they get MOE_HAVE_NCCL defined); the product
// library `moetrain_lib` has no NCCL and does not define these.
//
// Buffers: every pointer handed to a collective may be a device pointer (cudaMalloc'ed on this
// rank's device, or managed memory), used in place, or a host pointer, staged through a device
// buffer of the communicator (correct, slower). The std::vector overloads of the base class are
// host memory and therefore take the staged path. all_gather returns a host vector (its result
// type); all_gather_device gathers device to device.
// Ordering: each call enqueues on the communicator's own CUDA stream and waits for that stream
// before it returns, so results are ready on return and the caller's streams need no event.
// Errors throw moe::Error naming the NCCL or CUDA call and this rank, e.g.
//   "ncclAllReduce failed on rank 1 of 2: unhandled system error (<ncclGetLastError>)".
class NcclCommunicator final : public Communicator {
 public:
  ~NcclCommunicator() override;
  int rank() const override;
  int size() const override;
  std::string backend() const override { return "nccl"; }
  bool takes_device_buffers() const override { return true; }
  int device() const;  // this rank's CUDA device
  using Communicator::all_reduce_avg;  // the std::vector overloads (host memory: staged)
  using Communicator::all_reduce_sum;

  void all_reduce_sum(double* data, size_t n) override;
  void all_reduce_sum(float* data, size_t n) override;
  void all_reduce_max(double* data, size_t n) override;
  void all_reduce_avg(double* data, size_t n) override;  // ncclAvg: no host pass over device memory
  void all_reduce_avg(float* data, size_t n) override;
  std::vector<double> all_gather(const double* data, size_t count) override;
  std::vector<uint64_t> all_gather(const uint64_t* data, size_t count) override;
  // recv (count * size() values, device or host) gets every rank's `count` values in rank order.
  void all_gather_device(const double* send, size_t count, double* recv);
  void all_gather_device(const float* send, size_t count, float* recv);
  void broadcast(double* data, size_t n, int root) override;
  void broadcast(uint64_t* data, size_t n, int root) override;
  // ncclSend / ncclRecv per peer inside one ncclGroupStart / ncclGroupEnd (this rank's own block
  // is a device-to-device copy).
  void alltoallv(const float* send, const std::vector<int64_t>& send_counts, float* recv,
                 const std::vector<int64_t>& recv_counts) override;
  void alltoallv(const double* send, const std::vector<int64_t>& send_counts, double* recv,
                 const std::vector<int64_t>& recv_counts) override;
  void alltoallv(const uint16_t* send, const std::vector<int64_t>& send_counts, uint16_t* recv,
                 const std::vector<int64_t>& recv_counts) override;
  // An all-reduce of one value on the device, then the stream is waited for.
  void barrier() override;
  // ncclCommSplit: ranks with the same color, ordered by key then by rank (as MPI_Comm_split).
  std::shared_ptr<Communicator> split(int color, int key) override;

  struct Impl;
  explicit NcclCommunicator(std::unique_ptr<Impl> impl);

 private:
  std::unique_ptr<Impl> impl_;
};

// Connects the ranks of `bootstrap` (a host communicator of the same processes, normally the MPI
// world): every rank selects its CUDA device (`device` >= 0, else the node-local rank from
// OMPI_COMM_WORLD_LOCAL_RANK, else the rank, modulo the device count), rank 0 creates the
// ncclUniqueId and broadcasts it through `bootstrap`, every rank joins with ncclCommInitRank.
// A rank without a usable device makes every rank throw the same error naming it (an all-gather
// of each rank's status comes first, so no rank waits forever for one that failed).
std::shared_ptr<NcclCommunicator> make_nccl_communicator(std::shared_ptr<Communicator> bootstrap, int device = -1);

// "" when this process can use CUDA device(s): else one line saying why not (no driver, no
// device), e.g. for tests that skip.
std::string nccl_device_unavailable_reason();

}  // namespace moe
