// The NCCL backend of Communicator (device buffers, unique id through the host communicator).
// Compiled for real by the moetrain_nccl target (MOE_HAVE_NCCL); an empty unit in moetrain_lib.
#ifdef MOE_HAVE_NCCL
#include "parallel/nccl_communicator.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <cstring>

#include "core/error.h"

namespace moe {

struct NcclCommunicator::Impl {
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
  int rank = 0, size = 1, device = 0;
  void* scratch = nullptr;  // device staging for host buffers (grown on demand)
  size_t scratch_bytes = 0;
  void* scratch2 = nullptr;  // the second staging buffer (alltoallv receives, all_gather results)
  size_t scratch2_bytes = 0;

  std::string where() const { return " on rank " + std::to_string(rank) + " of " + std::to_string(size); }

  void check(ncclResult_t rc, const char* call) const {
    if (rc == ncclSuccess) return;
    const char* last = comm ? ncclGetLastError(comm) : nullptr;
    std::string detail = last && *last ? std::string(" (") + last + ")" : "";
    throw Error(std::string(call) + " failed" + where() + ": " + ncclGetErrorString(rc) + detail);
  }
  void check(cudaError_t rc, const char* call) const {
    if (rc == cudaSuccess) return;
    cudaGetLastError();  // reset the (non-sticky) error, so that the next call does not report it
    throw Error(std::string(call) + " failed" + where() + ": " + cudaGetErrorString(rc));
  }
  void sync(const char* after) const {
    cudaError_t rc = cudaStreamSynchronize(stream);
    if (rc != cudaSuccess)
      throw Error(std::string("cudaStreamSynchronize after ") + after + " failed" + where() + ": " +
                  cudaGetErrorString(rc));
  }

  static void* grow(void*& buf, size_t& have, size_t bytes, const Impl& self) {
    if (bytes <= have) return buf;
    if (buf) self.check(cudaFree(buf), "cudaFree");
    buf = nullptr;
    have = 0;
    self.check(cudaMalloc(&buf, bytes), "cudaMalloc (NCCL staging buffer)");
    have = bytes;
    return buf;
  }

  // True when p is host memory (staged through a device buffer); device and managed memory are
  // handed to NCCL as they are.
  bool is_host(const void* p) const {
    if (p == nullptr) return false;
    cudaPointerAttributes a{};
    check(cudaPointerGetAttributes(&a, p), "cudaPointerGetAttributes");
    return a.type != cudaMemoryTypeDevice && a.type != cudaMemoryTypeManaged;
  }

  // Device view of an in-place buffer of `bytes`: the pointer itself, or the staging buffer
  // loaded with its contents (copy_back() then writes the result back).
  struct InPlace {
    Impl* self;
    void* host;
    void* dev;
    size_t bytes;
    void copy_back() {
      if (!host) return;
      self->check(cudaMemcpyAsync(host, dev, bytes, cudaMemcpyDeviceToHost, self->stream), "cudaMemcpyAsync (D2H)");
      self->sync("the copy back to host memory");
    }
  };
  InPlace in_place(void* p, size_t bytes) {
    if (!is_host(p)) return {this, nullptr, p, bytes};
    void* d = grow(scratch, scratch_bytes, bytes, *this);
    check(cudaMemcpyAsync(d, p, bytes, cudaMemcpyHostToDevice, stream), "cudaMemcpyAsync (H2D)");
    return {this, p, d, bytes};
  }

  template <class T>
  static ncclDataType_t type();

  template <class T>
  void all_reduce(T* d, size_t n, ncclRedOp_t op, const char* call) {
    if (n == 0) return;
    InPlace b = in_place(d, n * sizeof(T));
    check(ncclAllReduce(b.dev, b.dev, n, type<T>(), op, comm, stream), call);
    sync(call);
    b.copy_back();
  }

  template <class T>
  void gather_into(const T* send, size_t count, T* recv) {
    const size_t out_bytes = count * size_t(size) * sizeof(T);
    if (out_bytes == 0) return;
    const void* s = send;
    if (is_host(send)) {
      void* d = grow(scratch, scratch_bytes, count * sizeof(T), *this);
      check(cudaMemcpyAsync(d, send, count * sizeof(T), cudaMemcpyHostToDevice, stream), "cudaMemcpyAsync (H2D)");
      s = d;
    }
    const bool host_out = is_host(recv);
    void* r = host_out ? grow(scratch2, scratch2_bytes, out_bytes, *this) : recv;
    check(ncclAllGather(s, r, count, type<T>(), comm, stream), "ncclAllGather");
    if (host_out) check(cudaMemcpyAsync(recv, r, out_bytes, cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync (D2H)");
    sync("ncclAllGather");
  }

  template <class T>
  void bcast(T* d, size_t n, int root) {
    MOE_CHECK(root >= 0 && root < size, "Communicator.broadcast", "root ", root, " outside a world of ", size,
              " ranks (nccl", where(), ")");
    if (n == 0) return;
    InPlace b = in_place(d, n * sizeof(T));
    check(ncclBroadcast(b.dev, b.dev, n, type<T>(), root, comm, stream), "ncclBroadcast");
    sync("ncclBroadcast");
    b.copy_back();
  }

  template <class T>
  void a2av(const T* send, const std::vector<int64_t>& sc, T* recv, const std::vector<int64_t>& rc) {
    MOE_CHECK(sc.size() == size_t(size) && rc.size() == size_t(size), "Communicator.alltoallv", "expected ", size,
              " send and receive counts, got ", sc.size(), " and ", rc.size(), " (nccl", where(), ")");
    int64_t send_total = 0, recv_total = 0;
    for (int p = 0; p < size; ++p) {
      MOE_CHECK(sc[size_t(p)] >= 0 && rc[size_t(p)] >= 0, "Communicator.alltoallv", "negative count for peer ", p);
      send_total += sc[size_t(p)];
      recv_total += rc[size_t(p)];
    }
    MOE_CHECK(sc[size_t(rank)] == rc[size_t(rank)], "Communicator.alltoallv", "this rank sends itself ",
              sc[size_t(rank)], " values but expects ", rc[size_t(rank)], " (nccl", where(), ")");
    const T* s = send;
    if (send_total > 0 && is_host(send)) {
      void* d = grow(scratch, scratch_bytes, size_t(send_total) * sizeof(T), *this);
      check(cudaMemcpyAsync(d, send, size_t(send_total) * sizeof(T), cudaMemcpyHostToDevice, stream),
            "cudaMemcpyAsync (H2D)");
      s = static_cast<const T*>(d);
    }
    const bool host_out = recv_total > 0 && is_host(recv);
    T* r = host_out ? static_cast<T*>(grow(scratch2, scratch2_bytes, size_t(recv_total) * sizeof(T), *this)) : recv;
    int64_t so = 0, ro = 0;
    check(ncclGroupStart(), "ncclGroupStart");
    for (int p = 0; p < size; ++p) {
      const int64_t n_send = sc[size_t(p)], n_recv = rc[size_t(p)];
      if (p == rank) {
        if (n_send > 0)
          check(cudaMemcpyAsync(r + ro, s + so, size_t(n_send) * sizeof(T), cudaMemcpyDeviceToDevice, stream),
                "cudaMemcpyAsync (own block)");
      } else {
        if (n_send > 0) check(ncclSend(s + so, size_t(n_send), type<T>(), p, comm, stream), "ncclSend");
        if (n_recv > 0) check(ncclRecv(r + ro, size_t(n_recv), type<T>(), p, comm, stream), "ncclRecv");
      }
      so += n_send;
      ro += n_recv;
    }
    check(ncclGroupEnd(), "ncclGroupEnd (alltoallv)");
    if (host_out)
      check(cudaMemcpyAsync(recv, r, size_t(recv_total) * sizeof(T), cudaMemcpyDeviceToHost, stream),
            "cudaMemcpyAsync (D2H)");
    sync("alltoallv");
  }

  ~Impl() {
    // No throwing here: a failed free at shut-down is not worth an abort.
    if (scratch) cudaFree(scratch);
    if (scratch2) cudaFree(scratch2);
    if (stream) cudaStreamDestroy(stream);
    if (comm) ncclCommDestroy(comm);
  }
};

template <>
ncclDataType_t NcclCommunicator::Impl::type<double>() { return ncclFloat64; }
template <>
ncclDataType_t NcclCommunicator::Impl::type<float>() { return ncclFloat32; }
template <>
ncclDataType_t NcclCommunicator::Impl::type<uint64_t>() { return ncclUint64; }
// 16-bit values (bf16 rows) only travel by send / receive, which move bits without arithmetic:
// ncclFloat16 is a 2-byte type that every NCCL version has.
template <>
ncclDataType_t NcclCommunicator::Impl::type<uint16_t>() { return ncclFloat16; }

NcclCommunicator::NcclCommunicator(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
NcclCommunicator::~NcclCommunicator() = default;
int NcclCommunicator::rank() const { return impl_->rank; }
int NcclCommunicator::size() const { return impl_->size; }
int NcclCommunicator::device() const { return impl_->device; }

void NcclCommunicator::all_reduce_sum(double* d, size_t n) { impl_->all_reduce(d, n, ncclSum, "ncclAllReduce (sum)"); }
void NcclCommunicator::all_reduce_sum(float* d, size_t n) { impl_->all_reduce(d, n, ncclSum, "ncclAllReduce (sum)"); }
void NcclCommunicator::all_reduce_max(double* d, size_t n) { impl_->all_reduce(d, n, ncclMax, "ncclAllReduce (max)"); }
void NcclCommunicator::all_reduce_avg(double* d, size_t n) { impl_->all_reduce(d, n, ncclAvg, "ncclAllReduce (avg)"); }
void NcclCommunicator::all_reduce_avg(float* d, size_t n) { impl_->all_reduce(d, n, ncclAvg, "ncclAllReduce (avg)"); }

std::vector<double> NcclCommunicator::all_gather(const double* d, size_t count) {
  std::vector<double> out(count * size_t(impl_->size));
  impl_->gather_into(d, count, out.data());
  return out;
}
std::vector<uint64_t> NcclCommunicator::all_gather(const uint64_t* d, size_t count) {
  std::vector<uint64_t> out(count * size_t(impl_->size));
  impl_->gather_into(d, count, out.data());
  return out;
}
void NcclCommunicator::all_gather_device(const double* s, size_t count, double* r) { impl_->gather_into(s, count, r); }
void NcclCommunicator::all_gather_device(const float* s, size_t count, float* r) { impl_->gather_into(s, count, r); }
void NcclCommunicator::broadcast(double* d, size_t n, int root) { impl_->bcast(d, n, root); }
void NcclCommunicator::broadcast(uint64_t* d, size_t n, int root) { impl_->bcast(d, n, root); }
void NcclCommunicator::alltoallv(const float* s, const std::vector<int64_t>& sc, float* r,
                                 const std::vector<int64_t>& rc) {
  impl_->a2av(s, sc, r, rc);
}
void NcclCommunicator::alltoallv(const double* s, const std::vector<int64_t>& sc, double* r,
                                 const std::vector<int64_t>& rc) {
  impl_->a2av(s, sc, r, rc);
}
void NcclCommunicator::alltoallv(const uint16_t* s, const std::vector<int64_t>& sc, uint16_t* r,
                                 const std::vector<int64_t>& rc) {
  impl_->a2av(s, sc, r, rc);
}

void NcclCommunicator::barrier() {
  void* d = Impl::grow(impl_->scratch, impl_->scratch_bytes, sizeof(float), *impl_);
  impl_->check(ncclAllReduce(d, d, 1, ncclFloat32, ncclSum, impl_->comm, impl_->stream), "ncclAllReduce (barrier)");
  impl_->sync("the barrier");
}

std::shared_ptr<Communicator> NcclCommunicator::split(int color, int key) {
  MOE_CHECK(color >= 0, "Communicator.split", "color must be >= 0, got ", color);
  auto sub = std::make_unique<Impl>();
  sub->device = impl_->device;
  impl_->check(ncclCommSplit(impl_->comm, color, key, &sub->comm, nullptr), "ncclCommSplit");
  sub->check(ncclCommUserRank(sub->comm, &sub->rank), "ncclCommUserRank");
  sub->check(ncclCommCount(sub->comm, &sub->size), "ncclCommCount");
  sub->check(cudaStreamCreateWithFlags(&sub->stream, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
  return std::make_shared<NcclCommunicator>(std::move(sub));
}

std::string nccl_device_unavailable_reason() {
  int n = 0;
  cudaError_t rc = cudaGetDeviceCount(&n);
  if (rc != cudaSuccess) {
    cudaGetLastError();
    return std::string("cudaGetDeviceCount: ") + cudaGetErrorString(rc);
  }
  if (n == 0) return "cudaGetDeviceCount: no CUDA device";
  return "";
}

std::shared_ptr<NcclCommunicator> make_nccl_communicator(std::shared_ptr<Communicator> bootstrap, int device) {
  MOE_CHECK(bootstrap != nullptr, "make_nccl_communicator", "needs the host communicator of the same ranks");
  auto impl = std::make_unique<NcclCommunicator::Impl>();
  impl->rank = bootstrap->rank();
  impl->size = bootstrap->size();
  // 1. Every rank picks its device; the statuses are exchanged before anything can block.
  std::string failure = nccl_device_unavailable_reason();
  if (failure.empty()) {
    int count = 0;
    cudaGetDeviceCount(&count);
    int pick = device;
    if (pick < 0) pick = node_local_rank(impl->rank) % count;
    if (pick >= count) {
      failure = "device " + std::to_string(pick) + " requested, " + std::to_string(count) + " present";
    } else {
      impl->device = pick;
      cudaError_t rc = cudaSetDevice(pick);
      if (rc == cudaSuccess) rc = cudaStreamCreateWithFlags(&impl->stream, cudaStreamNonBlocking);
      if (rc != cudaSuccess) failure = std::string("cudaSetDevice / cudaStreamCreate: ") + cudaGetErrorString(rc);
    }
  }
  // 2. Rank 0 creates the id (its status travels with it).
  ncclUniqueId id;
  std::memset(&id, 0, sizeof(id));
  if (impl->rank == 0 && failure.empty()) {
    ncclResult_t rc = ncclGetUniqueId(&id);
    if (rc != ncclSuccess) failure = std::string("ncclGetUniqueId: ") + ncclGetErrorString(rc);
  }
  const uint64_t bad = failure.empty() ? 0 : 1;
  std::vector<uint64_t> statuses = bootstrap->all_gather(&bad, 1);
  for (int r = 0; r < impl->size; ++r)
    if (statuses[size_t(r)] != 0) {
      if (r == impl->rank) throw Error("make_nccl_communicator failed on rank " + std::to_string(r) + ": " + failure);
      throw Error("make_nccl_communicator: rank " + std::to_string(r) + " of " + std::to_string(impl->size) +
                  " has no usable CUDA device or NCCL id (its own error names why)");
    }
  static_assert(sizeof(ncclUniqueId) % sizeof(uint64_t) == 0, "ncclUniqueId must travel as 64-bit words");
  uint64_t words[sizeof(ncclUniqueId) / sizeof(uint64_t)];
  std::memcpy(words, &id, sizeof(id));
  bootstrap->broadcast(words, sizeof(words) / sizeof(uint64_t), 0);
  std::memcpy(&id, words, sizeof(id));
  // 3. Every rank joins.
  impl->check(ncclCommInitRank(&impl->comm, impl->size, id, impl->rank), "ncclCommInitRank");
  return std::make_shared<NcclCommunicator>(std::move(impl));
}

}  // namespace moe
#endif  // MOE_HAVE_NCCL
