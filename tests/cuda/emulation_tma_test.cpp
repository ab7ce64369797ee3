// The emulation of core/cuda/tma.h (emulation_tma.h) catches what the GPU would hang on or
// compute garbage from: the mbarrier's phase / arrival / tx-count rules, copies that land only
// when their barrier is waited on (a reader before the wait sees poison), a wait that can never
// finish (a one-line failure after the timeout, not a hang), misuse of loads, setmaxnreg and named
// barriers; and the planted bugs of a warp-specialized pipeline (tma_selftest.h) fail. Bulk tensor
// stores land (clipped at the tensor's edges) when their thread waits, and a staging rewritten
// before wait_group.read, or written without the proxy fence, fails.
#ifdef MOE_CUDA_EMULATION
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <type_traits>
#include <vector>

#include "core/cuda/memory.h"
#include "core/cuda/tma.h"
#include "core/cuda/tma_selftest.h"
#include "core/cuda/wgmma.h"
#include "core/error.h"
#include "tests/cuda/kernel_test_util.h"

using namespace moe;
using namespace moe::cuda;
using namespace moe::test;

namespace {

// Runs body as a one-block kernel of `threads` threads with `smem` dynamic shared bytes.
void run_block(unsigned threads, size_t smem, const std::function<void()>& body) {
  static const char key = 0;
  emu::run_grid("tma_test_kernel", &key, dim3(1), dim3(threads), smem, body);
}

// The launch fails with a message containing every part.
void expect_failure(const std::function<void()>& launch, const std::vector<std::string>& parts) {
  try {
    launch();
    ADD_FAILURE() << "expected a failure containing \"" << parts[0] << "\"";
  } catch (const Error& e) {
    for (const std::string& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
}

// A short timeout for the tests of waits that cannot finish; restored after.
struct TimeoutScope {
  double previous;
  explicit TimeoutScope(double s) : previous(emu_tma::set_wait_timeout(s)) {}
  ~TimeoutScope() { emu_tma::set_wait_timeout(previous); }
};

// A 64 x 8 bf16 tensor (pattern i + 1) and its map with one 64 x 8 box (1024 bytes).
struct SmallMap {
  std::vector<uint16_t> host;
  DeviceBuffer<uint16_t> buf;
  TensorMap map;
  SmallMap() : host(make()), buf(host) {
    const uint64_t dims[2] = {64, 8}, strides[1] = {128};
    const uint32_t box[2] = {64, 8};
    map = make_tensor_map_bf16(buf.get(), 2, dims, strides, box, "emulation_tma_test");
  }
  static std::vector<uint16_t> make() {
    std::vector<uint16_t> v(512);
    for (size_t i = 0; i < v.size(); ++i) v[i] = uint16_t(i + 1);
    return v;
  }
};

uint64_t* shared_bar() {
  MOE_SHARED(uint64_t, bar, [2]);
  return bar;
}

TEST(EmulationTma, MbarrierPhaseNeedsArrivalsAndTxBytes) {
  SmallMap src;
  std::vector<emu_tma::Bar> seen(4);
  std::vector<uint16_t> landed(512);
  run_block(64, 2048, [&] {
    MOE_DYNAMIC_SHARED(unsigned char, smem);
    uint64_t* bar = shared_bar();
    const unsigned t = threadIdx.x;
    if (t == 0) {
      tma::mbar_init(bar, 2);
      tma::fence_barrier_init();
    }
    __syncthreads();
    tma::mbar_wait(bar, 1);  // a fresh barrier: the phase "before" phase 0 counts as complete
    __syncthreads();         // nobody waits on the barrier while the copy is issued: it stays queued
    if (t == 0) {
      tma::mbar_arrive_expect_tx(bar, 1024);
      tma::load_2d(smem, &src.map, bar, 0, 0);
      seen[0] = emu_tma::decode(*bar);  // one arrival pending, 1024 bytes expected
    }
    __syncthreads();
    if (t == 1) {
      tma::mbar_arrive(bar);
      seen[1] = emu_tma::decode(*bar);  // no arrival pending, the copy's bytes not landed
    }
    __syncthreads();
    tma::mbar_wait(bar, 0);  // lands the copy: the phase completes
    if (t == 0) seen[2] = emu_tma::decode(*bar);
    for (unsigned i = t; i < 512; i += 64) landed[i] = reinterpret_cast<const uint16_t*>(smem)[i];
  });
  EXPECT_EQ(seen[0].pending, 1u);
  EXPECT_EQ(seen[0].tx, 1024);
  EXPECT_EQ(seen[1].pending, 0u);
  EXPECT_EQ(seen[1].tx, 1024);
  EXPECT_EQ(seen[2].pending, 2u);
  EXPECT_EQ(seen[2].tx, 0);
  EXPECT_EQ(seen[2].parity, 1u);
  for (uint32_t r = 0; r < 8; ++r)
    for (uint32_t e = 0; e < 64; ++e)
      ASSERT_EQ(landed[r * 64 + ((e / 8) ^ r) * 8 + e % 8], src.host[r * 64 + e]) << "row " << r << " element " << e;
}

TEST(EmulationTma, ReaderBeforeTheWaitSeesPoison) {
  SmallMap src;
  uint16_t before = 0, after = 0;
  run_block(32, 2048, [&] {
    MOE_DYNAMIC_SHARED(unsigned char, smem);
    uint64_t* bar = shared_bar();
    if (threadIdx.x == 0) {
      std::memset(smem, 0, 1024);  // a stale stage: the load's issue poisons it
      tma::mbar_init(bar, 1);
      tma::fence_barrier_init();
      tma::mbar_arrive_expect_tx(bar, 1024);
      tma::load_2d(smem, &src.map, bar, 0, 0);
      before = reinterpret_cast<const uint16_t*>(smem)[0];
      tma::mbar_wait(bar, 0);
      after = reinterpret_cast<const uint16_t*>(smem)[0];
    }
  });
  EXPECT_EQ(before, 0xFFFF);
  EXPECT_EQ(after, src.host[0]);
}

TEST(EmulationTma, WaitThatCannotFinishFailsAfterTheTimeout) {
  TimeoutScope timeout(0.3);
  expect_failure(
      [] {
        run_block(32, 0, [] {
          uint64_t* bar = shared_bar();
          if (threadIdx.x == 0) {
            tma::mbar_init(bar, 2);
            tma::fence_barrier_init();
          }
          __syncthreads();
          if (threadIdx.x == 0) tma::mbar_arrive(bar);
          tma::mbar_wait(bar, 0);
        });
      },
      {"tma::mbar_wait", "no progress", "pending 1 of 2 arrivals"});
}

TEST(EmulationTma, ArrivalWithNonePendingFails) {
  expect_failure(
      [] {
        run_block(32, 0, [] {
          uint64_t* bar = shared_bar();
          if (threadIdx.x == 0) {
            tma::mbar_init(bar, 1);
            tma::mbar_arrive_expect_tx(bar, 64);  // the phase now waits for 64 bytes only
            tma::mbar_arrive(bar);
          }
        });
      },
      {"tma::mbar_arrive", "no pending arrival"});
}

TEST(EmulationTma, LoadAndBarrierMisuseIsOneLine) {
  SmallMap src;
  auto one = [&](const std::function<void(unsigned char*, uint64_t*)>& f) {
    return [&, f] {
      run_block(32, 4096, [&] {
        MOE_DYNAMIC_SHARED(unsigned char, smem);
        uint64_t* bar = shared_bar();
        if (threadIdx.x == 0) f(smem, bar);
      });
    };
  };
  expect_failure(one([&](unsigned char*, uint64_t* bar) { tma::mbar_wait(bar, 0); }), {"not initialized"});
  expect_failure(one([&](unsigned char* smem, uint64_t* bar) {
                   tma::mbar_init(bar, 1);
                   tma::load_2d(smem + 512, &src.map, bar, 0, 0);
                 }),
                 {"tma::load_2d", "offset 512", "1024-byte aligned"});
  expect_failure(one([&](unsigned char* smem, uint64_t* bar) {
                   tma::mbar_init(bar, 1);
                   tma::load_2d(smem + 3072 + 1024, &src.map, bar, 0, 0);
                 }),
                 {"tma::load_2d", "not inside the block's dynamic shared memory"});
  expect_failure(one([&](unsigned char* smem, uint64_t* bar) {
                   tma::mbar_init(bar, 1);
                   tma::load_3d(smem, &src.map, bar, 0, 0, 0);
                 }),
                 {"tma::load_3d", "rank 2"});
  expect_failure(one([&](unsigned char* smem, uint64_t* bar) {
                   tma::mbar_init(bar, 1);
                   tma::load_2d(smem, &src.map, bar, 13, 0);
                 }),
                 {"tma::load_2d", "innermost coordinate 13", "16 bytes"});
  expect_failure(one([&](unsigned char* smem, uint64_t* bar) {
                   tma::mbar_init(bar, 1);
                   TensorMap zero{};
                   tma::load_2d(smem, &zero, bar, 0, 0);
                 }),
                 {"not made by make_tensor_map_bf16"});
  expect_failure(one([&](unsigned char* smem, uint64_t* bar) {
                   tma::mbar_init(bar, 1);
                   tma::mbar_init(bar + 1, 1);
                   tma::load_2d(smem, &src.map, bar, 0, 0);
                   tma::load_2d(smem, &src.map, bar + 1, 0, 0);
                 }),
                 {"has not landed"});
  expect_failure(one([&](unsigned char* smem, uint64_t*) { tma::mbar_init(reinterpret_cast<uint64_t*>(smem + 4), 1); }),
                 {"8-byte aligned"});
}

TEST(EmulationTma, NamedBarriersSyncTheirThreadsOnly) {
  std::vector<int> order_ok(256, 0);
  run_block(256, 0, [&] {
    MOE_SHARED(int, count, [2]);
    const int t = int(threadIdx.x), group = t / 128;
    if (t == 0) count[0] = count[1] = 0;
    __syncthreads();
    for (int round = 1; round <= 3; ++round) {
      atomicAdd(&count[group], 1);
      tma::named_barrier_sync(1 + group, 128);
      order_ok[size_t(t)] += std::atomic_ref<int>(count[group]).load() >= 128 * round;
      tma::named_barrier_sync(1 + group, 128);  // nobody adds for the next round before all have read
    }
  });
  for (int t = 0; t < 256; ++t) EXPECT_EQ(order_ok[size_t(t)], 3) << "thread " << t;
}

TEST(EmulationTma, SetmaxnregAndNamedBarrierMisuseFail) {
  expect_failure([] { run_block(96, 0, [] { tma::setmaxnreg_dec<40>(); }); }, {"setmaxnreg.dec", "complete warpgroup"});
  expect_failure(
      [] {
        run_block(128, 0, [] {
          tma::setmaxnreg_inc<232>();
          tma::setmaxnreg_inc<200>();
        });
      },
      {"setmaxnreg.inc(200) after 232"});
  expect_failure(
      [] {
        run_block(256, 0, [] {
          if (threadIdx.x < 96 || threadIdx.x >= 128) tma::setmaxnreg_dec<40>();  // warp 3 skips it
        });
      },
      {"setmaxnreg.dec(40)", "warp 3 of its warpgroup did not execute"});
  expect_failure([] { run_block(64, 0, [] { tma::named_barrier_sync(0, 64); }); }, {"id 0"});
  expect_failure([] { run_block(64, 0, [] { tma::named_barrier_sync(1, 48); }); }, {"48 threads"});
  expect_failure(
      [] {
        run_block(128, 0, [] {
          if (threadIdx.x < 96)
            tma::setmaxnreg_dec<40>();
          else
            __syncthreads();  // warp 3 elsewhere, still live: a hang on the GPU, a deadlock here
        });
      },
      {"deadlock", "96 of 128 at warpgroup 0's warpgroup-wide instruction", "32 of 128 at __syncthreads"});
  TimeoutScope timeout(0.3);
  expect_failure([] { run_block(128, 0, [] {
                   if (threadIdx.x < 64) tma::named_barrier_sync(1, 96);
                 }); },
                 {"named barrier 1 over 96 threads", "no progress"});
}

// The pipeline of tma_selftest.h with a planted bug: the launch's error ("" if none) and c.
std::string run_pipeline(TmaPlant plant, std::vector<float>& c) {
  const int m = 100, n = 120, k = 456, ks = 464;
  DeviceBuffer<bf16> da(to_bf16(random_normal(size_t(m) * ks, 1))), db(to_bf16(random_normal(size_t(n) * ks, 2)));
  DeviceBuffer<float> dc(size_t(m) * n);
  try {
    tma_pipeline_gemm(da.get(), db.get(), m, n, k, ks, dc.get(), plant, nullptr);
  } catch (const Error& e) {
    ::testing::Test::RecordProperty("failure", e.what());  // which check caught it (--gtest_output=xml)
    return e.what();
  }
  c = dc.to_host();
  return "";
}

TEST(EmulationTma, PlantedConsumerSkippingTheFullWaitFails) {
  // The stage's load is queued when the wgmma reads it (the pending-load check), lands under the
  // products (a race at their wait), or is not yet issued: the products read poison (NaN).
  std::vector<float> c;
  const std::string what = run_pipeline(TmaPlant::consumer_skips_full_wait, c);
  if (what.empty())
    EXPECT_TRUE(std::any_of(c.begin(), c.end(), [](float v) { return std::isnan(v); }))
        << "a consumer that skips the full barrier must fail or read poison";
  else
    EXPECT_TRUE(what.find("has not landed") != std::string::npos || what.find("wgmma") != std::string::npos) << what;
}

TEST(EmulationTma, PlantedWrongExpectTxTimesOut) {
  TimeoutScope timeout(0.5);
  std::vector<float> c;
  const std::string what = run_pipeline(TmaPlant::wrong_expect_tx, c);
  EXPECT_NE(what.find("tma::mbar_wait"), std::string::npos) << what;
  EXPECT_NE(what.find("no progress"), std::string::npos) << what;
}

// The refill meets the products in flight (the consumers hold them 100 ms under this plant): the
// load into bytes a wgmma reads, over a load that has not landed, or an arrival on a full barrier
// whose phase still waits for bytes: each is a failure naming the stage's barrier protocol.
TEST(EmulationTma, PlantedProducerSkippingTheEmptyWaitFails) {
  std::vector<float> c;
  const std::string what = run_pipeline(TmaPlant::producer_skips_empty_wait, c);
  EXPECT_TRUE(what.find("still reads it") != std::string::npos || what.find("has not landed") != std::string::npos ||
              what.find("no pending arrival") != std::string::npos)
      << (what.empty() ? "no failure" : what);
}

// The wgmma checks, one block of one warpgroup: an 8 KiB [64][64] tile by TMA, then m64n64k16
// products over it.
void tile_and_products(bool wait_before_products, bool reload_in_flight) {
  std::vector<uint16_t> host(64 * 64, 0x3F80);  // 1.0
  DeviceBuffer<uint16_t> buf(host);
  const uint64_t dims[2] = {64, 64}, strides[1] = {128};
  const uint32_t box[2] = {64, 64};
  const TensorMap map = make_tensor_map_bf16(buf.get(), 2, dims, strides, box, "emulation_tma_test");
  run_block(128, 8192, [&] {
    MOE_DYNAMIC_SHARED(unsigned char, smem);
    uint64_t* bar = shared_bar();
    if (threadIdx.x == 0) {
      tma::mbar_init(bar, 1);
      tma::fence_barrier_init();
      tma::mbar_arrive_expect_tx(bar, 8192);
      tma::load_2d(smem, &map, bar, 0, 0);
    }
    __syncthreads();
    if (wait_before_products) tma::mbar_wait(bar, 0);
    float d[32] = {};
    const uint64_t desc = wgmma::make_desc(wgmma::smem_address(smem), 16, 1024, wgmma::Swizzle::b128);
    wgmma::fence();
    wgmma::mma_async<64>(d, desc, desc, false);
    wgmma::commit_group();
    __syncthreads();
    if (reload_in_flight && threadIdx.x == 0) {
      tma::mbar_arrive_expect_tx(bar, 8192);
      tma::load_2d(smem, &map, bar, 0, 0);
    }
    wgmma::wait_group<0>();
  });
}

TEST(EmulationTma, WgmmaReadingAnUnlandedLoadFails) {
  tile_and_products(true, false);  // the correct order passes
  expect_failure([] { tile_and_products(false, false); }, {"wgmma.mma_async reads shared memory", "has not landed"});
}

TEST(EmulationTma, LoadIntoBytesAnUnretiredWgmmaReadsFails) {
  expect_failure([] { tile_and_products(true, true); }, {"tma::load_2d", "while an issued wgmma still reads it"});
}

// ---- bulk tensor stores ----

float as_float(float v) { return v; }
float as_float(bf16 v) { return bf16_to_float(v); }
template <class T>
T from_float(float v) {
  if constexpr (std::is_same_v<T, bf16>)
    return float_to_bf16(v);
  else
    return v;
}

// A [rows][ld] global tensor of T (cols of each row inside the tensor map), filled with `fill`, and
// its store map: boxes of 128 bytes x 16 rows.
template <class T>
struct StoreTarget {
  static constexpr uint32_t kBoxCols = 128 / sizeof(T), kBoxRows = 16, kBoxBytes = 2048;
  uint64_t rows, cols, ld;
  std::vector<T> fill;
  DeviceBuffer<T> buf;
  TensorMap map;
  StoreTarget(uint64_t rows_, uint64_t cols_, uint64_t ld_, T sentinel)
      : rows(rows_), cols(cols_), ld(ld_), fill(rows_ * ld_, sentinel), buf(fill) {
    const uint64_t dims[2] = {cols, rows}, strides[1] = {ld * sizeof(T)};
    const uint32_t box[2] = {kBoxCols, kBoxRows};
    map = make_tensor_map(buf.get(), int(sizeof(T)), 2, dims, strides, box, "emulation_tma_test");
  }
};

// The value box element (e, r) holds in the tests, and where the 128B swizzle puts it in shared memory.
template <class T>
T box_value(uint32_t e, uint32_t r, int salt) {
  // Integers below 256 (exact in bf16), the sign telling the salts apart.
  return from_float<T>(float(1 + (r * 37 + e * 3) % 255) * (salt % 2 ? 1.0f : -1.0f));
}
template <class T>
T* box_slot(unsigned char* box, uint32_t e, uint32_t r) {
  const uint32_t byte = e * sizeof(T);
  return reinterpret_cast<T*>(box + r * 128 + ((byte / 16) ^ (r % 8)) * 16 + byte % 16);
}
// The warp's lanes write the box image (rows split over lanes), fence, then meet.
template <class T>
void write_box(unsigned char* box, int salt, bool fence) {
  for (uint32_t r = threadIdx.x; r < 16; r += 32)
    for (uint32_t e = 0; e < 128 / sizeof(T); ++e) *box_slot<T>(box, e, r) = box_value<T>(e, r, salt);
  if (fence) tma::fence_proxy_async_shared();
  __syncwarp();
}

// Stores one box at (c0, c1) and checks the tensor: the box's in-range elements landed, every other
// element (outside the box, or in the row padding past the 16-byte chunk holding the last column)
// kept the sentinel. The 50 columns end inside a chunk (fp32 200 bytes, bf16 100): as an H100 does
// (tests/cuda/tma_test.cpp), the chunk is written whole, so columns up to 52 (fp32) or 56 (bf16).
template <class T>
void store_box_and_check(int c0, int c1) {
  StoreTarget<T> t(21, 50, 56, from_float<T>(-7.0f));
  run_block(32, 4096, [&] {
    MOE_DYNAMIC_SHARED(unsigned char, smem);
    write_box<T>(smem + 2048, 1, true);
    if (threadIdx.x == 0) {
      tma::store_2d(&t.map, smem + 2048, c0, c1);
      tma::bulk_commit_group();
      tma::bulk_wait_group<0>();
    }
  });
  const std::vector<T> got = t.buf.to_host();
  int landed = 0;
  const uint64_t written_cols = (t.cols * sizeof(T) + 15) / 16 * 16 / sizeof(T);
  for (uint64_t r = 0; r < t.rows; ++r)
    for (uint64_t c = 0; c < t.ld; ++c) {
      const int64_t e = int64_t(c) - c0, br = int64_t(r) - c1;
      const bool in = c < written_cols && e >= 0 && e < int64_t(t.kBoxCols) && br >= 0 && br < 16;
      const T want = in ? box_value<T>(uint32_t(e), uint32_t(br), 1) : from_float<T>(-7.0f);
      landed += in;
      ASSERT_EQ(as_float(got[r * t.ld + c]), as_float(want)) << "row " << r << " col " << c << " box at " << c0 << ", " << c1;
    }
  EXPECT_GT(landed, 0);
}

TEST(EmulationTma, StoreLandsAndIsClippedAtTheEdges) {
  store_box_and_check<float>(0, 0);    // inside
  store_box_and_check<float>(32, 8);   // columns 52.. and rows 21.. clipped
  store_box_and_check<float>(8, 13);   // rows 21.. clipped
  store_box_and_check<bf16>(0, 3);     // 64 bf16 columns: 56.. clipped
  store_box_and_check<bf16>(48, 12);   // a box of 8 columns, 56.. clipped, rows 21.. clipped
}

// One warp: box image `salt` 1 into the staging, store; then the planted variants. Returns the tensor.
struct StorePlan {
  bool fence_first = true;     // fence between the first image's writes and its store
  bool rewrite_early = false;  // write a second image before waiting for the first store's read
  bool second_store = false;   // then store the second image too (after the wait)
  bool fence_second = true;
  bool wait = true;            // wait for the stores at all
};
std::vector<float> run_store_plan(const StorePlan& p) {
  StoreTarget<float> t(16, 32, 32, -7.0f);
  run_block(32, 2048, [&] {
    MOE_DYNAMIC_SHARED(unsigned char, smem);
    write_box<float>(smem, 1, p.fence_first);
    if (threadIdx.x == 0) {
      tma::store_2d(&t.map, smem, 0, 0);
      tma::bulk_commit_group();
    }
    if (p.rewrite_early) write_box<float>(smem, 2, true);
    if (threadIdx.x == 0 && p.wait) tma::bulk_wait_group_read<0>();
    __syncwarp();
    if (p.second_store) {
      write_box<float>(smem, 2, p.fence_second);
      if (threadIdx.x == 0) {
        tma::store_2d(&t.map, smem, 0, 0);
        tma::bulk_commit_group();
        tma::bulk_wait_group<0>();
      }
    }
  });
  return t.buf.to_host();
}

TEST(EmulationTma, StoreReadsItsSourceUntilWaitGroupRead) {
  // Rewriting the staging after wait_group.read is the correct order: both images land in turn.
  StorePlan ok;
  ok.second_store = true;
  EXPECT_EQ(run_store_plan(ok)[33], box_value<float>(1, 1, 2));
  // Before it, the store may still be reading: one line.
  StorePlan early;
  early.rewrite_early = true;
  expect_failure([&] { run_store_plan(early); },
                 {"tma::bulk_wait_group_read", "was overwritten before the store read it", "dynamic shared offset 0"});
}

TEST(EmulationTma, StoreWithoutProxyFenceFails) {
  StorePlan first;
  first.fence_first = false;
  expect_failure([&] { run_store_plan(first); }, {"tma::store_2d", "no fence_proxy_async_shared"});
  StorePlan second;
  second.second_store = true;
  second.fence_second = false;
  expect_failure([&] { run_store_plan(second); }, {"tma::store_2d", "no fence_proxy_async_shared"});
}

TEST(EmulationTma, StoreNeverWaitedForLandsAsPoison) {
  StorePlan p;
  p.wait = false;
  const std::vector<float> got = run_store_plan(p);
  EXPECT_TRUE(std::isnan(got[0]));
  EXPECT_TRUE(std::isnan(got[15 * 32 + 31]));
}

TEST(EmulationTma, StoreMisuseIsOneLine) {
  StoreTarget<float> t(16, 32, 32, 0.0f);
  struct ThreeD {
    DeviceBuffer<float> buf{size_t(32 * 16 * 2)};
    TensorMap map;
    ThreeD() {
      const uint64_t dims[3] = {32, 16, 2}, strides[2] = {128, 2048};
      const uint32_t box[3] = {32, 16, 1};
      map = make_tensor_map(buf.get(), 4, 3, dims, strides, box, "emulation_tma_test");
    }
  } three_d;
  auto one = [&](const std::function<void(unsigned char*)>& f) {
    return [&, f] {
      run_block(32, 4096, [&] {
        MOE_DYNAMIC_SHARED(unsigned char, smem);
        write_box<float>(smem, 0, true);
        if (threadIdx.x == 0) f(smem);
      });
    };
  };
  expect_failure(one([&](unsigned char* smem) { tma::store_2d(&t.map, smem + 512, 0, 0); }),
                 {"tma::store_2d", "offset 512", "1024-byte aligned"});
  expect_failure(one([&](unsigned char* smem) { tma::store_2d(&t.map, smem + 3072, 0, 0); }),
                 {"tma::store_2d", "not inside the block's dynamic shared memory"});
  expect_failure(one([&](unsigned char* smem) { tma::store_2d(&t.map, smem, 6, 0); }),
                 {"tma::store_2d", "innermost coordinate 6", "16 bytes"});
  // A box starting before the tensor: loads zero-fill there, stores fault the GPU.
  expect_failure(one([&](unsigned char* smem) { tma::store_2d(&t.map, smem, -4, 0); }),
                 {"tma::store_2d", "coordinates (-4, 0)", "negative coordinate faults the GPU"});
  expect_failure(one([&](unsigned char* smem) { tma::store_2d(&t.map, smem, 0, -5); }),
                 {"tma::store_2d", "coordinates (0, -5)", "negative coordinate faults the GPU"});
  expect_failure(one([&](unsigned char* smem) {
                   TensorMap zero{};
                   tma::store_2d(&zero, smem, 0, 0);
                 }),
                 {"tma::store_2d", "not made by make_tensor_map"});
  expect_failure(one([&](unsigned char* smem) { tma::store_2d(&three_d.map, smem, 0, 0); }),
                 {"tma::store_2d", "rank 3"});
  // The fp32 map's box is 32 elements: a 64-element box of fp32 is refused when the map is made.
  const uint64_t dims[2] = {64, 16}, strides[1] = {256};
  const uint32_t box[2] = {64, 16};
  expect_failure([&] { make_tensor_map(t.buf.get(), 4, 2, dims, strides, box, "emulation_tma_test"); },
                 {"box[0] = 64", "expected 32"});
  expect_failure([&] { make_tensor_map(t.buf.get(), 8, 2, dims, strides, box, "emulation_tma_test"); },
                 {"8-byte elements", "expected 2 (bf16) or 4 (fp32)"});
}

}  // namespace
#endif  // MOE_CUDA_EMULATION
