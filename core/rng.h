// Philox4x32-10 counter-based RNG. A draw is a pure function of (seed, stream, offset), so
// any random number of a run can be reproduced after a resume by restoring the offset.
#pragma once
#include <array>
#include <cstdint>

namespace moe {

std::array<uint32_t, 4> philox4x32(uint64_t key, uint64_t counter_hi, uint64_t counter_lo);

// One stream of random numbers: `stream` separates purposes (init, dropout, jitter, SSR,
// data shuffling, ...) and ranks; `offset` counts 32-bit draws consumed so far.
class Philox {
 public:
  Philox(uint64_t seed = 0, uint64_t stream = 0, uint64_t offset = 0)
      : seed_(seed), stream_(stream), offset_(offset) {}

  uint32_t next_u32();
  uint64_t next_u64();
  double uniform();           // [0, 1), 53 random bits
  float uniform_f32();        // [0, 1), 24 random bits
  double normal();            // standard normal (Box-Muller on two uniforms)
  uint64_t below(uint64_t n); // uniform integer in [0, n), no modulo bias

  uint64_t seed() const { return seed_; }
  uint64_t stream() const { return stream_; }
  uint64_t offset() const { return offset_; }
  void set_offset(uint64_t offset) { offset_ = offset; }

 private:
  uint64_t seed_, stream_, offset_;
};

// Named streams, so a purpose never shares draws with another.
enum class RngStream : uint64_t { init = 1, data = 2, jitter = 3, ssr = 4, test = 99 };
inline uint64_t stream_id(RngStream s, uint64_t rank = 0, uint64_t layer = 0) {
  return (uint64_t(s) << 48) | (rank << 24) | layer;
}

}  // namespace moe
