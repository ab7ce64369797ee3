// The global batch of the strategies coupled across tokens under data parallelism: every rank's
// router scores gathered in rank order, so each rank can compute the single-process result.
#pragma once
#include <cstdint>
#include <vector>

#include "parallel/communicator.h"

namespace moe {

// Rows of a [rows, cols] matrix from every rank of a communicator, concatenated in rank order:
// exactly the matrix one process would hold for the union of the ranks' micro-batches.
struct GlobalRows {
  std::vector<double> values;  // [total * cols], row-major
  int64_t total = 0;           // rows over all ranks
  int64_t offset = 0;          // index of this rank's first row in `values`
};

// comm == nullptr or a world of one: this process's rows, offset 0. Ranks may hold
// different row counts (one all-gather of the counts, then one of the rows padded to the
// largest count); `cols` must be the same on every rank (checked, the error names `where`).
// Cost: two collectives, total * cols doubles received by every rank.
GlobalRows gather_rows(Communicator* comm, std::vector<double> local, int64_t rows, int64_t cols, const char* where);

}  // namespace moe
