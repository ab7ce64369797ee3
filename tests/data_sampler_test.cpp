// Sampler and EvalIterator: window contents, determinism, rank slices that reassemble the
// single-process batch, bit-exact resume from a saved cursor, per-epoch reshuffling, and
// fixed-order genre-labelled evaluation windows.
#include <gtest/gtest.h>

#include <map>
#include <numeric>
#include <set>

#include "data/sampler.h"
#include "tests/data_test_util.h"

using namespace moe;

namespace {

// A stream whose token at position p is p, so a window's contents reveal where it starts.
std::shared_ptr<const TokenDataset> position_stream(const std::string& name, uint32_t n) {
  const std::string dir = test::fresh_dir(name);
  std::vector<uint32_t> ids(n);
  std::iota(ids.begin(), ids.end(), 0u);
  // Two files, so windows also cross a file boundary.
  const uint32_t cut = n / 3;
  test::write_bytes(dir + "/a.u32", std::string(reinterpret_cast<const char*>(ids.data()), cut * 4));
  test::write_bytes(dir + "/b.u32", std::string(reinterpret_cast<const char*>(ids.data() + cut), (n - cut) * 4));
  return TokenDataset::open_files({dir + "/a.u32", dir + "/b.u32"}, TokenFormat::raw_u32);
}

SamplerConfig config(int64_t S, int64_t B, uint64_t seed, int rank = 0, int world = 1) {
  SamplerConfig c;
  c.seq_len = S;
  c.global_batch = B;
  c.seed = seed;
  c.rank = rank;
  c.world = world;
  return c;
}

std::vector<int32_t> ids_of(const Batch& b) {
  std::vector<int32_t> v = b.inputs.to_vector<int32_t>();
  std::vector<int32_t> t = b.targets.to_vector<int32_t>();
  v.insert(v.end(), t.begin(), t.end());
  return v;
}

}  // namespace

TEST(DataSampler, WindowsAreShiftedInputsAndTargets) {
  auto data = position_stream("sampler_windows", 5003);
  const int64_t S = 13, B = 6;
  Sampler s(data, config(S, B, 7));
  std::set<uint64_t> seen;
  uint64_t shift = UINT64_MAX;
  for (int step = 0; step < 20; ++step) {
    Batch b = s.next();
    ASSERT_EQ(b.inputs.shape(), (Shape{B, S}));
    ASSERT_EQ(b.targets.shape(), (Shape{B, S}));
    ASSERT_EQ(b.inputs.dtype(), DType::i32);
    const int32_t* in = b.inputs.data<int32_t>();
    const int32_t* tg = b.targets.data<int32_t>();
    for (int64_t r = 0; r < B; ++r) {
      const int32_t start = in[r * S];
      for (int64_t j = 0; j < S; ++j) {
        ASSERT_EQ(in[r * S + j], start + j);
        ASSERT_EQ(tg[r * S + j], start + j + 1);
      }
      ASSERT_LE(uint64_t(start + S), data->size() - 1);
      if (shift == UINT64_MAX) shift = uint64_t(start) % S;
      EXPECT_EQ(uint64_t(start) % S, shift);  // one grid per epoch
      EXPECT_TRUE(seen.insert(start).second) << "window " << start << " drawn twice in one epoch";
    }
  }
  EXPECT_EQ(s.cursor().epoch, 0u);
  EXPECT_EQ(s.cursor().position, 120u);
  EXPECT_EQ(s.windows_in_epoch(), (5003 - 1 - shift) / S);
}

TEST(DataSampler, DeterministicBySeed) {
  auto data = position_stream("sampler_det", 3001);
  Sampler a(data, config(11, 4, 42)), b(data, config(11, 4, 42)), c(data, config(11, 4, 43));
  bool differs = false;
  for (int i = 0; i < 150; ++i) {  // crosses several epochs (68 windows / 4 per batch)
    std::vector<int32_t> x = ids_of(a.next()), y = ids_of(b.next()), z = ids_of(c.next());
    ASSERT_EQ(x, y) << "step " << i;
    differs |= (x != z);
  }
  EXPECT_TRUE(differs);
  EXPECT_EQ(a.cursor(), b.cursor());
  EXPECT_GE(a.cursor().epoch, 2u);
}

TEST(DataSampler, RankSlicesReassembleTheSingleProcessBatch) {
  auto data = position_stream("sampler_ranks", 4007);
  const int64_t S = 9, B = 12;
  Sampler one(data, config(S, B, 5));
  std::vector<Sampler> ranks;
  for (int r = 0; r < 3; ++r) ranks.emplace_back(data, config(S, B, 5, r, 3));
  EXPECT_EQ(ranks[0].local_batch(), 4);
  for (int step = 0; step < 80; ++step) {  // 444 windows / 12: crosses two epoch boundaries
    Batch full = one.next();
    std::vector<int32_t> in, tg;
    for (auto& r : ranks) {
      Batch b = r.next();
      ASSERT_EQ(b.inputs.shape(), (Shape{4, S}));
      auto i = b.inputs.to_vector<int32_t>(), t = b.targets.to_vector<int32_t>();
      in.insert(in.end(), i.begin(), i.end());
      tg.insert(tg.end(), t.begin(), t.end());
    }
    ASSERT_EQ(in, full.inputs.to_vector<int32_t>()) << "step " << step;
    ASSERT_EQ(tg, full.targets.to_vector<int32_t>()) << "step " << step;
    for (auto& r : ranks) ASSERT_EQ(r.cursor(), one.cursor());
  }
  EXPECT_GE(one.cursor().epoch, 2u);
}

TEST(DataSampler, MicroBatchesAndRanksCoverTheSameStepBatch) {
  // 60 windows per epoch at most; B = 12 sequences per optimizer step.
  auto data = position_stream("sampler_accum", 607);
  const int64_t S = 10, B = 12;
  Sampler one(data, config(S, B, 8));
  auto make = [&](int rank, int world, int64_t accum) {
    SamplerConfig c = config(S, B, 8, rank, world);
    c.grad_accum = accum;
    return Sampler(data, c);
  };
  std::vector<Sampler> dp2a2 = {make(0, 2, 2), make(1, 2, 2)};
  Sampler a3 = make(0, 1, 3);
  EXPECT_EQ(dp2a2[0].local_batch(), 3);
  EXPECT_EQ(a3.local_batch(), 4);
  for (int step = 0; step < 25; ++step) {  // several epochs
    const std::vector<int32_t> want = one.next().inputs.to_vector<int32_t>();
    std::vector<int32_t> got_dp, got_a3;
    for (int m = 0; m < 2; ++m)
      for (auto& r : dp2a2) {
        auto v = r.next().inputs.to_vector<int32_t>();
        got_dp.insert(got_dp.end(), v.begin(), v.end());
      }
    for (int m = 0; m < 3; ++m) {
      auto v = a3.next().inputs.to_vector<int32_t>();
      got_a3.insert(got_a3.end(), v.begin(), v.end());
    }
    ASSERT_EQ(got_dp, want) << "step " << step;
    ASSERT_EQ(got_a3, want) << "step " << step;
    ASSERT_EQ(a3.cursor(), one.cursor());
    ASSERT_EQ(dp2a2[1].cursor(), one.cursor());
  }
  EXPECT_GE(one.cursor().epoch, 4u);
  SamplerCursor mid = one.cursor();
  mid.position += 1;
  EXPECT_ERROR_WITH(a3.restore(mid), "Sampler::restore", "not a multiple of the 4 windows");
  EXPECT_ERROR_WITH(make(0, 2, 4), "global batch 12", "grad_accum 4 x 2 ranks");
}

TEST(DataSampler, ResumeFromSavedCursorIsBitExact) {
  auto data = position_stream("sampler_resume", 2503);
  const SamplerConfig cfg = config(7, 8, 99, 1, 2);
  // Resume mid-epoch, and exactly at an epoch's end (the next call starts the next epoch).
  Sampler probe(data, cfg);
  const uint64_t per_epoch = probe.windows_in_epoch() / 8;
  for (uint64_t stop : {uint64_t(5), per_epoch, per_epoch + 3}) {
    Sampler straight(data, cfg);
    for (uint64_t i = 0; i < stop; ++i) straight.next();
    const SamplerCursor saved = straight.cursor();
    Sampler resumed(data, cfg);
    // Through the checkpoint representation, as the trainer stores it.
    resumed.restore(cursor_from_vector(cursor_to_vector(saved), "ckpt:/data/rank_1"));
    EXPECT_EQ(resumed.cursor(), saved);
    for (int i = 0; i < 2 * int(per_epoch) + 5; ++i) {
      Batch a = straight.next(), b = resumed.next();
      ASSERT_EQ(ids_of(a), ids_of(b)) << "stop " << stop << " step " << i;
    }
    EXPECT_EQ(straight.cursor(), resumed.cursor());
  }
  EXPECT_ERROR_WITH(cursor_from_vector({1, 2}, "ckpt:/data/rank_0"), "ckpt:/data/rank_0", "2 values", "expected 3");
  EXPECT_ERROR_WITH(cursor_from_vector({1, -2, 0}, "ckpt:/data/rank_0"), "negative");
  Sampler other(data, cfg);
  SamplerCursor bad{0, 1u << 30, 0};
  const std::vector<int32_t> first = ids_of(Sampler(data, cfg).next());
  EXPECT_ERROR_WITH(other.restore(bad), "Sampler::restore", "position 1073741824", "windows of that epoch");
  EXPECT_EQ(other.cursor(), SamplerCursor{});
  EXPECT_EQ(ids_of(other.next()), first);  // unchanged by the refused cursor
}

TEST(DataSampler, EpochsReshuffle) {
  auto data = position_stream("sampler_epochs", 1303);
  const int64_t S = 5, B = 4;
  Sampler s(data, config(S, B, 3));
  std::map<uint64_t, std::vector<int32_t>> order;  // epoch -> window starts in draw order
  while (s.cursor().epoch < 3 || s.cursor().position + B <= s.windows_in_epoch()) {
    const uint64_t pending_epoch = s.cursor().position + B > s.windows_in_epoch() ? s.cursor().epoch + 1 : s.cursor().epoch;
    if (pending_epoch > 3) break;
    Batch b = s.next();
    for (int64_t r = 0; r < B; ++r) order[s.cursor().epoch].push_back(b.inputs.data<int32_t>()[r * S]);
  }
  ASSERT_EQ(order.size(), 4u);
  for (auto& [e, starts] : order) {
    std::set<int32_t> unique(starts.begin(), starts.end());
    EXPECT_EQ(unique.size(), starts.size()) << "epoch " << e;
    EXPECT_GE(starts.size(), (1303 - S) / S / B * B) << "epoch " << e;  // every full batch drawn
  }
  EXPECT_NE(order[0], order[1]);
  EXPECT_NE(order[1], order[2]);
  std::vector<int32_t> sorted0 = order[0];
  std::sort(sorted0.begin(), sorted0.end());
  EXPECT_NE(order[0], sorted0);  // shuffled, not stream order
  // The window grid moves between epochs too (shift in [0, S) drawn per epoch).
  std::set<int32_t> shifts;
  for (auto& [e, starts] : order) shifts.insert(starts[0] % S);
  EXPECT_GE(shifts.size(), 2u);
}

TEST(DataSampler, ConfigErrors) {
  auto data = position_stream("sampler_errors", 100);
  EXPECT_ERROR_WITH(Sampler(data, config(10, 12, 0)), "100 tokens", "windows of seq_len + 1 = 11", "global batch of 12");
  EXPECT_ERROR_WITH(Sampler(data, config(4, 6, 0, 0, 4)), "Sampler", "global batch 6", "multiple of the 4");
  EXPECT_ERROR_WITH(Sampler(data, config(4, 4, 0, 4, 4)), "Sampler", "rank 4 outside world of 4");
  EXPECT_ERROR_WITH(Sampler(data, config(0, 4, 0)), "seq_len must be >= 1");
}

TEST(DataEval, FixedOrderGenreWindowsSlicedByRank) {
  // Three genres; documents of uneven lengths; genre b has a document too short for a window.
  std::vector<Document> docs;
  const char* genres[] = {"a", "b", "c"};
  for (int i = 0; i < 9; ++i) {
    Document d;
    d.name = "doc" + std::to_string(i);
    d.genre = genres[i / 3];
    d.genre_name = std::string("genre_") + genres[i / 3];
    d.split = Split::val;
    d.text = std::string(i == 4 ? 5 : 200 + 37 * i, char('a' + i));
    docs.push_back(d);
  }
  const std::string dir = test::fresh_dir("eval_genres");
  PrepareOptions opt;
  opt.quiet = true;
  opt.shard_tokens = 700;
  write_prepared(dir, "text", docs, opt);
  auto val = TokenDataset::open_prepared(dir, Split::val);
  ASSERT_EQ(val->genre_names(), (std::vector<std::string>{"genre_a", "genre_b", "genre_c"}));

  const int64_t S = 16;
  EvalConfig cfg;
  cfg.seq_len = S;
  cfg.global_batch = 6;
  EvalIterator all(val, cfg);
  // Every window lies inside one document: all its bytes equal that document's letter.
  uint64_t expect = 0;
  for (const DocSpan& d : val->documents()) expect += d.tokens >= uint64_t(S) + 1 ? (d.tokens - 1) / S : 0;
  EXPECT_EQ(all.num_windows(), expect - expect % 6);
  EvalBatch b;
  std::vector<int32_t> rows_genre;
  std::vector<uint64_t> starts;
  while (all.next(b)) {
    const int32_t* in = b.inputs.data<int32_t>();
    const int32_t* tg = b.targets.data<int32_t>();
    for (int64_t r = 0; r < b.inputs.size(0); ++r) {
      for (int64_t j = 0; j < S; ++j) {
        ASSERT_EQ(in[r * S + j], in[r * S]);
        ASSERT_EQ(tg[r * S + j], in[r * S]);
      }
      const int doc = in[r * S] - 'a';
      EXPECT_EQ(b.genres[r], doc / 3);
      rows_genre.push_back(b.genres[r]);
    }
  }
  EXPECT_EQ(rows_genre.size(), all.num_windows());
  EXPECT_FALSE(all.next(b));
  all.reset();
  EXPECT_TRUE(all.next(b));

  // A budget of 15 windows (rounded down to 12, two global batches): evenly spaced over all
  // genres; two ranks' rows together are the one-rank rows in order.
  cfg.max_windows = 15;
  EvalIterator one(val, cfg);
  EXPECT_EQ(one.num_windows(), 12u);
  EXPECT_EQ(one.num_batches(), 2u);
  std::set<int32_t> covered;
  std::vector<int32_t> single;
  while (one.next(b)) {
    auto v = b.inputs.to_vector<int32_t>();
    single.insert(single.end(), v.begin(), v.end());
    covered.insert(b.genres.begin(), b.genres.end());
  }
  EXPECT_EQ(covered.size(), 3u);
  cfg.world = 2;
  std::vector<EvalIterator> ranks;
  for (int r = 0; r < 2; ++r) {
    cfg.rank = r;
    ranks.emplace_back(val, cfg);
  }
  EXPECT_EQ(ranks[0].window_starts(), one.window_starts());
  std::vector<int32_t> merged;
  for (uint64_t k = 0; k < 2; ++k)
    for (auto& it : ranks) {
      ASSERT_TRUE(it.next(b));
      EXPECT_EQ(b.inputs.size(0), 3);
      EXPECT_EQ(b.genres.size(), 3u);
      auto v = b.inputs.to_vector<int32_t>();
      merged.insert(merged.end(), v.begin(), v.end());
    }
  EXPECT_FALSE(ranks[0].next(b));
  EXPECT_EQ(merged, single);
  cfg.seq_len = 490;
  cfg.rank = 0;
  EXPECT_ERROR_WITH(EvalIterator(val, cfg), "no evaluation batch", "seq_len + 1 = 491", "global batch of 6");
}
