// Training batches and evaluation windows over a TokenDataset: the resumable, rank-sliced,
// deterministically shuffled Sampler, and the fixed-order, genre-labelled EvalIterator.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "data/dataset.h"

namespace moe {

struct SamplerConfig {
  int64_t seq_len = 0;       // S: a window holds S + 1 tokens (inputs = first S, targets = last S)
  int64_t global_batch = 0;  // windows per optimizer step over all ranks (train.batch_size)
  int rank = 0, world = 1;   // data-parallel rank and world size
  int64_t grad_accum = 1;    // A micro-batches per optimizer step; next() returns one of them
  uint64_t seed = 0;
};

// Everything that decides the future batches of a Sampler (stored per rank in checkpoints).
// The cursor is global (equal on all ranks): windows consumed of the epoch's order, and the
// Philox offset at which the epoch's shuffle starts.
struct SamplerCursor {
  uint64_t epoch = 0;
  uint64_t position = 0;    // windows of this epoch's permutation already handed out (all ranks)
  uint64_t rng_offset = 0;  // Philox(seed, stream_id(RngStream::data)) offset of the epoch's shuffle
  bool operator==(const SamplerCursor&) const = default;
};

// The cursor as the three int64 values a checkpoint stores (/data/rank_<r>): epoch, position,
// rng_offset. Reading checks the length and signs; `where` names the source in errors.
std::vector<int64_t> cursor_to_vector(const SamplerCursor& c);
SamplerCursor cursor_from_vector(const std::vector<int64_t>& v, const std::string& where);

struct Batch {
  Tensor inputs, targets;  // [B_local, S] int32 each; targets are inputs shifted by one token
};

// Epoch e: the stream is cut into windows starting at shift_e + i * S (i < N_e, a window owns
// S + 1 tokens, consecutive windows share one), shift_e in [0, S) and the order of the N_e
// windows drawn by a Fisher-Yates shuffle from Philox(seed, data stream, cursor.rng_offset).
// An optimizer step's global batch is the next B_global windows of that order; an epoch ends
// when fewer than B_global remain (they are skipped) and the next epoch's shuffle starts at
// the Philox offset where this one's ended. With A micro-batches per step, micro-batch m holds
// the step's windows [m * B / A, (m + 1) * B / A) and rank r takes its r-th of W equal slices
// (B_local = B / (A * W) rows per next()). The windows of a step are thus the same for every
// (W, A): the union over micro-batches and ranks, in that order, is the single-process batch.
class Sampler {
 public:
  Sampler(std::shared_ptr<const TokenDataset> data, SamplerConfig cfg);

  Batch next();
  // Global start positions (stream offsets) of this rank's windows of the next batch; the same
  // cursor advance as next() without copying tokens.
  std::vector<uint64_t> next_starts();

  const SamplerCursor& cursor() const { return cursor_; }
  void restore(const SamplerCursor& c);  // a cursor this sampler's data and config could reach

  int64_t local_batch() const { return local_; }  // rows per next(): B / (A * W)
  uint64_t windows_in_epoch() const { return order_.size(); }
  const SamplerConfig& config() const { return cfg_; }

 private:
  void shuffle();
  std::shared_ptr<const TokenDataset> data_;
  SamplerConfig cfg_;
  int64_t local_ = 0;
  SamplerCursor cursor_;
  uint64_t shift_ = 0, next_epoch_offset_ = 0;
  std::vector<uint32_t> order_;
};

struct EvalConfig {
  int64_t seq_len = 0, global_batch = 0;
  int rank = 0, world = 1;
  uint64_t max_windows = 0;  // windows per evaluation over all ranks (0: every window)
};

struct EvalBatch {
  Tensor inputs, targets;       // [B_local, S] int32
  std::vector<int32_t> genres;  // genre of each row (index into TokenDataset::genre_names())
};

// Evaluation windows lie inside one document each (so each has one genre): starts
// doc.offset + k * S with the window's S + 1 tokens in the document. From the C candidates in
// stream order, M = min(C, max_windows) rounded down to a multiple of global_batch are taken
// evenly spaced (candidate floor(j * C / M)), so a partial evaluation still spans every genre
// and the windows do not depend on the number of ranks. Batches are consecutive groups of
// global_batch windows; rank r gets rows [r * B_local, (r + 1) * B_local) of each, like the
// Sampler. Fixed order: no RNG involved.
class EvalIterator {
 public:
  EvalIterator(std::shared_ptr<const TokenDataset> data, EvalConfig cfg);
  bool next(EvalBatch& out);  // false once every batch was handed out
  void reset() { batch_ = 0; }
  uint64_t num_windows() const { return starts_.size(); }
  uint64_t num_batches() const;
  const std::vector<uint64_t>& window_starts() const { return starts_; }  // all ranks, in order

 private:
  std::shared_ptr<const TokenDataset> data_;
  EvalConfig cfg_;
  std::vector<uint64_t> starts_;
  std::vector<int32_t> genres_;
  uint64_t batch_ = 0;
};

}  // namespace moe
