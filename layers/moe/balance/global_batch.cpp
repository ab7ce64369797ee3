// Gathering the ranks' router scores into the global batch, and the Balancer's choice of the
// communicator for balance.scope (the one place that reads the scope's meaning).
#include "layers/moe/balance/global_batch.h"

#include <algorithm>

#include "core/error.h"
#include "layers/moe/balance/balancer.h"

namespace moe {

Communicator* Balancer::batch_communicator(const std::string& scope) const {
  if (scope != "global" || !comm_ || comm_->size() == 1) return nullptr;
  return comm_.get();
}

GlobalRows gather_rows(Communicator* comm, std::vector<double> local, int64_t rows, int64_t cols, const char* where) {
  MOE_CHECK(rows >= 0 && cols >= 1 && int64_t(local.size()) == rows * cols, where, "gather_rows: ", local.size(),
            " values for [", rows, ", ", cols, "]");
  GlobalRows g;
  if (comm == nullptr || comm->size() == 1) {
    g.values = std::move(local);
    g.total = rows;
    return g;
  }
  const uint64_t mine[2] = {uint64_t(rows), uint64_t(cols)};
  const std::vector<uint64_t> shapes = comm->all_gather(mine, 2);
  const int W = comm->size(), me = comm->rank();
  uint64_t widest = 0;
  for (int r = 0; r < W; ++r) {
    MOE_CHECK(shapes[size_t(2 * r + 1)] == uint64_t(cols), where, "rank ", r, " routes ", shapes[size_t(2 * r + 1)],
              " experts, rank ", me, " routes ", cols, " (balance.scope = global needs the same router on every rank)");
    widest = std::max(widest, shapes[size_t(2 * r)]);
    if (r < me) g.offset += int64_t(shapes[size_t(2 * r)]);
    g.total += int64_t(shapes[size_t(2 * r)]);
  }
  local.resize(size_t(widest) * size_t(cols), 0.0);  // equal counts for the all-gather
  const std::vector<double> padded = comm->all_gather(local.data(), local.size());
  g.values.resize(size_t(g.total) * size_t(cols));
  auto out = g.values.begin();
  for (int r = 0; r < W; ++r) {
    auto first = padded.begin() + ptrdiff_t(size_t(r) * local.size());
    out = std::copy(first, first + ptrdiff_t(shapes[size_t(2 * r)] * uint64_t(cols)), out);
  }
  return g;
}

}  // namespace moe
