// A Communicator that hands every collective to another one. Tests derive from it to vary one
// thing about a real (MPI) communicator: what it claims (takes_device_buffers, backend), or which
// of the base class's defaults it keeps (gather, all_reduce_avg are not forwarded).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "parallel/communicator.h"

namespace moe::test {

class ForwardingCommunicator : public Communicator {
 public:
  explicit ForwardingCommunicator(std::shared_ptr<Communicator> inner) : inner_(std::move(inner)) {}
  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  std::string backend() const override { return "forwarding " + inner_->backend(); }
  void all_reduce_sum(double* d, size_t n) override { inner_->all_reduce_sum(d, n); }
  void all_reduce_sum(float* d, size_t n) override { inner_->all_reduce_sum(d, n); }
  void all_reduce_max(double* d, size_t n) override { inner_->all_reduce_max(d, n); }
  std::vector<double> all_gather(const double* d, size_t n) override { return inner_->all_gather(d, n); }
  std::vector<uint64_t> all_gather(const uint64_t* d, size_t n) override { return inner_->all_gather(d, n); }
  void broadcast(double* d, size_t n, int root) override { inner_->broadcast(d, n, root); }
  void broadcast(uint64_t* d, size_t n, int root) override { inner_->broadcast(d, n, root); }
  void alltoallv(const float* s, const std::vector<int64_t>& sc, float* r, const std::vector<int64_t>& rc) override {
    inner_->alltoallv(s, sc, r, rc);
  }
  void alltoallv(const double* s, const std::vector<int64_t>& sc, double* r, const std::vector<int64_t>& rc) override {
    inner_->alltoallv(s, sc, r, rc);
  }
  void alltoallv(const uint16_t* s, const std::vector<int64_t>& sc, uint16_t* r,
                 const std::vector<int64_t>& rc) override {
    inner_->alltoallv(s, sc, r, rc);
  }
  void barrier() override { inner_->barrier(); }
  std::shared_ptr<Communicator> split(int color, int key) override { return inner_->split(color, key); }

 protected:
  std::shared_ptr<Communicator> inner_;
};

}  // namespace moe::test
