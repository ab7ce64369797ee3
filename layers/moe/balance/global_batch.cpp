// Column shares of the global batch (an alltoallv transposition and its inverse), the padded
// all-gather the dual iterations use, and the Balancer's choice of communicator for balance.scope.
#include "layers/moe/balance/global_batch.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "layers/moe/balance/balancer.h"

namespace moe {

Communicator* Balancer::data_parallel_communicator() const {
  return comm_ && comm_->size() > 1 ? comm_.get() : nullptr;
}

Communicator* Balancer::batch_communicator(const std::string& scope) const {
  return scope == "global" ? data_parallel_communicator() : nullptr;
}

std::pair<int64_t, int64_t> owned_columns(int64_t cols, int rank, int world) {
  return {cols * rank / world, cols * (rank + 1) / world};
}

std::vector<double> all_gather_varying(Communicator& comm, const double* mine, const std::vector<int64_t>& counts) {
  const int W = comm.size(), me = comm.rank();
  const int64_t widest = *std::max_element(counts.begin(), counts.end());
  std::vector<double> padded(size_t(std::max<int64_t>(widest, 1)), 0.0);
  std::copy(mine, mine + counts[size_t(me)], padded.begin());
  const std::vector<double> all = comm.all_gather(padded.data(), padded.size());
  std::vector<double> out;
  for (int r = 0; r < W; ++r) {
    auto first = all.begin() + ptrdiff_t(size_t(r) * padded.size());
    out.insert(out.end(), first, first + counts[size_t(r)]);
  }
  return out;
}

ColumnShare share_columns(Communicator& comm, const std::vector<double>& local, int64_t rows, int64_t cols,
                          const char* where) {
  MOE_CHECK(rows >= 0 && cols >= 1 && int64_t(local.size()) == rows * cols, where, "share_columns: ", local.size(),
            " values for [", rows, ", ", cols, "]");
  const int W = comm.size(), me = comm.rank();
  // [rows, cols, index of the first NaN + 1 (0: none)] of every rank
  uint64_t nan_at = 0;
  for (size_t i = 0; i < local.size() && nan_at == 0; ++i)
    if (std::isnan(local[i])) nan_at = uint64_t(i) + 1;
  const uint64_t mine[3] = {uint64_t(rows), uint64_t(cols), nan_at};
  const std::vector<uint64_t> shapes = comm.all_gather(mine, 3);
  ColumnShare sh;
  sh.rows.resize(static_cast<size_t>(W));
  for (int r = 0; r < W; ++r) {
    const uint64_t* s = &shapes[size_t(3 * r)];
    MOE_CHECK(s[1] == uint64_t(cols), where, "rank ", r, " routes ", s[1], " experts, rank ", me, " routes ", cols,
              " (balance.scope = global needs the same router on every rank)");
    MOE_CHECK(s[2] == 0, where, "router scores contain NaN on rank ", r, " (token ", (s[2] - 1) / s[1], ", expert ",
              (s[2] - 1) % s[1], ")");
    sh.rows[size_t(r)] = int64_t(s[0]);
    if (r < me) sh.offset += int64_t(s[0]);
    sh.total += int64_t(s[0]);
  }
  std::tie(sh.col_begin, sh.col_end) = owned_columns(cols, me, W);
  const int64_t own = sh.col_end - sh.col_begin;
  // To peer p: its experts' values of this rank's tokens, expert-major.
  std::vector<int64_t> send_counts(static_cast<size_t>(W)), recv_counts(static_cast<size_t>(W));
  std::vector<double> send;
  send.reserve(local.size());
  for (int p = 0; p < W; ++p) {
    auto [b, e] = owned_columns(cols, p, W);
    for (int64_t j = b; j < e; ++j)
      for (int64_t i = 0; i < rows; ++i) send.push_back(local[size_t(i * cols + j)]);
    send_counts[size_t(p)] = rows * (e - b);
    recv_counts[size_t(p)] = sh.rows[size_t(p)] * own;
  }
  std::vector<double> recv(size_t(sh.total * own));
  comm.alltoallv(send.data(), send_counts, recv.data(), recv_counts);
  sh.columns.resize(recv.size());
  int64_t from = 0, token0 = 0;
  for (int p = 0; p < W; ++p) {
    const int64_t n = sh.rows[size_t(p)];
    for (int64_t jj = 0; jj < own; ++jj)
      std::copy(recv.begin() + from + jj * n, recv.begin() + from + (jj + 1) * n,
                sh.columns.begin() + jj * sh.total + token0);
    from += n * own;
    token0 += n;
  }
  return sh;
}

std::vector<double> return_columns(Communicator& comm, const ColumnShare& sh, const std::vector<double>& owned,
                                   int64_t cols) {
  const int W = comm.size(), me = comm.rank();
  const int64_t own = sh.col_end - sh.col_begin, rows = sh.rows[size_t(me)];
  MOE_CHECK(int64_t(owned.size()) == own * sh.total, "balance.return_columns", owned.size(), " values for ", own,
            " experts x ", sh.total, " tokens");
  std::vector<int64_t> send_counts(static_cast<size_t>(W)), recv_counts(static_cast<size_t>(W));
  std::vector<double> send;
  send.reserve(owned.size());
  int64_t token0 = 0;
  for (int p = 0; p < W; ++p) {
    const int64_t n = sh.rows[size_t(p)];
    for (int64_t jj = 0; jj < own; ++jj)
      send.insert(send.end(), owned.begin() + jj * sh.total + token0, owned.begin() + jj * sh.total + token0 + n);
    token0 += n;
    auto [b, e] = owned_columns(cols, p, W);
    send_counts[size_t(p)] = n * own;
    recv_counts[size_t(p)] = rows * (e - b);
  }
  std::vector<double> recv(size_t(rows * cols));
  comm.alltoallv(send.data(), send_counts, recv.data(), recv_counts);
  std::vector<double> out(size_t(rows * cols));
  int64_t from = 0;
  for (int p = 0; p < W; ++p) {
    auto [b, e] = owned_columns(cols, p, W);
    for (int64_t j = b; j < e; ++j)
      for (int64_t i = 0; i < rows; ++i) out[size_t(i * cols + j)] = recv[size_t(from++)];
  }
  return out;
}

}  // namespace moe
