// The global batch of the strategies coupled across tokens under data parallelism: the router
// scores of every rank's tokens, split by expert over the ranks, so each rank works on E / W columns.
#pragma once
#include <cstdint>
#include <utility>
#include <vector>

#include "parallel/communicator.h"

namespace moe {

// The experts [begin, end) whose columns rank `rank` of `world` holds: contiguous blocks,
// [r E / W, (r + 1) E / W) (empty for some ranks when E < W).
std::pair<int64_t, int64_t> owned_columns(int64_t cols, int rank, int world);

// This rank's columns of the global batch (every rank's tokens in rank order).
struct ColumnShare {
  std::vector<int64_t> rows;           // tokens of each rank
  int64_t total = 0;                   // tokens of all ranks
  int64_t offset = 0;                  // global index of this rank's first token
  int64_t col_begin = 0, col_end = 0;  // this rank's experts
  std::vector<double> columns;         // [(col_end - col_begin) x total]: one contiguous column per expert
};

// Transposes the ranks' [rows, cols] score matrices (row-major, `rows` may differ by rank, `cols`
// may not) into column shares: one all-gather of the shapes, one alltoallv moving T_local x cols
// values per rank. A NaN in any rank's scores, or ranks with different `cols`, throw the same
// moe::Error on every rank (naming `where` and the rank), so no rank is left in a collective.
ColumnShare share_columns(Communicator& comm, const std::vector<double>& local, int64_t rows, int64_t cols,
                          const char* where);

// The inverse: each owner's values for (its experts x every token), [(col_end - col_begin) x
// total], go back to the ranks holding the tokens; returns this rank's [rows, cols] row-major.
std::vector<double> return_columns(Communicator& comm, const ColumnShare& share, const std::vector<double>& owned,
                                   int64_t cols);

// Every rank's `counts[rank]` values, concatenated in rank order (one all-gather, padded to the
// largest count).
std::vector<double> all_gather_varying(Communicator& comm, const double* mine, const std::vector<int64_t>& counts);

}  // namespace moe
