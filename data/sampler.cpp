// Sampler (shuffled, rank-sliced, resumable training windows) and EvalIterator (fixed-order,
// genre-labelled validation windows).
#include "data/sampler.h"

#include <numeric>

#include "core/rng.h"

namespace moe {

namespace {

// Copies windows of S + 1 tokens into inputs / targets [rows, S].
void fill_rows(const TokenDataset& data, const std::vector<uint64_t>& starts, int64_t S, Tensor& inputs,
               Tensor& targets) {
  const int64_t rows = int64_t(starts.size());
  inputs = Tensor::empty({rows, S}, DType::i32);
  targets = Tensor::empty({rows, S}, DType::i32);
  int32_t* in = inputs.data<int32_t>();
  int32_t* tg = targets.data<int32_t>();
  std::vector<int32_t> buf(size_t(S) + 1);
  for (int64_t r = 0; r < rows; ++r) {
    data.copy(starts[r], uint64_t(S) + 1, buf.data());
    std::copy(buf.begin(), buf.end() - 1, in + r * S);
    std::copy(buf.begin() + 1, buf.end(), tg + r * S);
  }
}

void check_layout(const char* who, int64_t S, int64_t B, int rank, int world) {
  MOE_CHECK(S >= 1, who, "seq_len must be >= 1 (got ", S, ")");
  MOE_CHECK(world >= 1 && rank >= 0 && rank < world, who, "rank ", rank, " outside world of ", world);
  MOE_CHECK(B >= 1 && B % world == 0, who, "global batch ", B, " must be a positive multiple of the ",
            world, " data-parallel ranks");
}

}  // namespace

std::vector<int64_t> cursor_to_vector(const SamplerCursor& c) {
  return {int64_t(c.epoch), int64_t(c.position), int64_t(c.rng_offset)};
}

SamplerCursor cursor_from_vector(const std::vector<int64_t>& v, const std::string& where) {
  MOE_CHECK(v.size() == 3, where.c_str(), "data cursor has ", v.size(),
            " values (expected 3: epoch, position, rng_offset)");
  MOE_CHECK(v[0] >= 0 && v[1] >= 0 && v[2] >= 0, where.c_str(), "data cursor (", v[0], ", ", v[1], ", ", v[2],
            ") has a negative value");
  return {uint64_t(v[0]), uint64_t(v[1]), uint64_t(v[2])};
}

Sampler::Sampler(std::shared_ptr<const TokenDataset> data, SamplerConfig cfg)
    : data_(std::move(data)), cfg_(cfg) {
  check_layout("Sampler", cfg.seq_len, cfg.global_batch, cfg.rank, cfg.world);
  MOE_CHECK(cfg.grad_accum >= 1 && cfg.global_batch % (cfg.grad_accum * cfg.world) == 0, "Sampler", "global batch ",
            cfg.global_batch, " must split into grad_accum ", cfg.grad_accum, " x ", cfg.world,
            " ranks x a whole number of sequences");
  local_ = cfg.global_batch / (cfg.grad_accum * cfg.world);
  const uint64_t S = uint64_t(cfg.seq_len), L = data_->size();
  // The largest shift (S - 1) leaves the fewest windows; every epoch must fill one batch.
  const uint64_t min_windows = L >= S ? (L - S) / S : 0;
  MOE_CHECK(min_windows >= uint64_t(cfg.global_batch), data_->description().c_str(), L,
            " tokens give only ", min_windows, " windows of seq_len + 1 = ", S + 1,
            " tokens, fewer than the global batch of ", cfg.global_batch);
  MOE_CHECK((L - 1) / S < (uint64_t(1) << 32), data_->description().c_str(), "more than 2^32 windows per epoch");
  shuffle();
}

void Sampler::shuffle() {
  Philox rng(cfg_.seed, stream_id(RngStream::data), cursor_.rng_offset);
  const uint64_t S = uint64_t(cfg_.seq_len), L = data_->size();
  shift_ = rng.below(S);
  const uint64_t n = (L - 1 - shift_) / S;
  order_.resize(n);
  std::iota(order_.begin(), order_.end(), 0u);
  for (uint64_t i = n; i > 1; --i) std::swap(order_[i - 1], order_[rng.below(i)]);
  next_epoch_offset_ = rng.offset();
}

std::vector<uint64_t> Sampler::next_starts() {
  const uint64_t B = uint64_t(cfg_.global_batch);
  // Epochs end only between optimizer steps, so micro-batching never changes which windows
  // an optimizer step sees.
  if (cursor_.position % B == 0 && cursor_.position + B > order_.size()) {
    cursor_.epoch += 1;
    cursor_.position = 0;
    cursor_.rng_offset = next_epoch_offset_;
    shuffle();
  }
  std::vector<uint64_t> starts(static_cast<size_t>(local_));
  const uint64_t first = cursor_.position + uint64_t(cfg_.rank) * uint64_t(local_);
  for (int64_t b = 0; b < local_; ++b) starts[b] = shift_ + uint64_t(order_[first + b]) * uint64_t(cfg_.seq_len);
  cursor_.position += uint64_t(local_) * uint64_t(cfg_.world);
  return starts;
}

Batch Sampler::next() {
  Batch b;
  fill_rows(*data_, next_starts(), cfg_.seq_len, b.inputs, b.targets);
  return b;
}

void Sampler::restore(const SamplerCursor& c) {
  const uint64_t micro = uint64_t(local_) * uint64_t(cfg_.world);
  MOE_CHECK(c.position % micro == 0, "Sampler::restore", "cursor position ", c.position,
            " is not a multiple of the ", micro, " windows of one micro-batch (a cursor of another batch layout?)");
  const SamplerCursor before = cursor_;
  cursor_ = c;
  shuffle();
  if (c.position > order_.size()) {
    const uint64_t n = order_.size();
    cursor_ = before;  // a refused cursor leaves the sampler as it was
    shuffle();
    MOE_FAIL("Sampler::restore", "cursor position ", c.position, " of epoch ", c.epoch, " is beyond the ", n,
             " windows of that epoch in ", data_->description(), " (a cursor of other data or seq_len?)");
  }
}

EvalIterator::EvalIterator(std::shared_ptr<const TokenDataset> data, EvalConfig cfg)
    : data_(std::move(data)), cfg_(cfg) {
  check_layout("EvalIterator", cfg.seq_len, cfg.global_batch, cfg.rank, cfg.world);
  const uint64_t S = uint64_t(cfg.seq_len);
  std::vector<uint64_t> cand;
  std::vector<int32_t> cand_genre;
  for (const DocSpan& d : data_->documents())
    for (uint64_t s = d.offset; s + S + 1 <= d.offset + d.tokens; s += S) {
      cand.push_back(s);
      cand_genre.push_back(d.genre);
    }
  // Whole global batches only: every rank gets rows in every batch, and the windows evaluated
  // do not depend on the number of ranks.
  const uint64_t C = cand.size(), B = uint64_t(cfg.global_batch);
  uint64_t M = cfg.max_windows == 0 ? C : std::min<uint64_t>(C, cfg.max_windows);
  M -= M % B;
  MOE_CHECK(M >= 1, data_->description().c_str(), "no evaluation batch: ", C, " windows of seq_len + 1 = ", S + 1,
            " tokens fit inside documents (max_windows = ", cfg.max_windows, "), fewer than the global batch of ", B);
  for (uint64_t j = 0; j < M; ++j) {
    const uint64_t k = uint64_t((unsigned __int128)j * C / M);
    starts_.push_back(cand[k]);
    genres_.push_back(cand_genre[k]);
  }
}

uint64_t EvalIterator::num_batches() const {
  return starts_.size() / uint64_t(cfg_.global_batch);
}

bool EvalIterator::next(EvalBatch& out) {
  if (batch_ >= num_batches()) return false;
  const uint64_t B = uint64_t(cfg_.global_batch), W = uint64_t(cfg_.world), r = uint64_t(cfg_.rank);
  const uint64_t local = B / W, lo = batch_ * B + r * local, hi = lo + local;
  std::vector<uint64_t> starts(starts_.begin() + lo, starts_.begin() + hi);
  out.genres.assign(genres_.begin() + lo, genres_.begin() + hi);
  fill_rows(*data_, starts, cfg_.seq_len, out.inputs, out.targets);
  ++batch_;
  return true;
}

}  // namespace moe
