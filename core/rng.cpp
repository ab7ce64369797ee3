// Philox4x32-10 (Salmon et al., SC'11), the generator cuRAND and PyTorch use on GPUs.
#include "core/rng.h"

#include <cmath>

namespace moe {

std::array<uint32_t, 4> philox4x32(uint64_t key, uint64_t counter_hi, uint64_t counter_lo) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  uint32_t c0 = uint32_t(counter_lo), c1 = uint32_t(counter_lo >> 32);
  uint32_t c2 = uint32_t(counter_hi), c3 = uint32_t(counter_hi >> 32);
  uint32_t k0 = uint32_t(key), k1 = uint32_t(key >> 32);
  for (int round = 0; round < 10; ++round) {
    uint64_t p0 = uint64_t(kM0) * c0, p1 = uint64_t(kM1) * c2;
    uint32_t n0 = uint32_t(p1 >> 32) ^ c1 ^ k0;
    uint32_t n1 = uint32_t(p1);
    uint32_t n2 = uint32_t(p0 >> 32) ^ c3 ^ k1;
    uint32_t n3 = uint32_t(p0);
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 += kW0;
    k1 += kW1;
  }
  return {c0, c1, c2, c3};
}

uint32_t Philox::next_u32() {
  // Counter = (stream, offset / 4); one Philox call yields 4 words.
  auto block = philox4x32(seed_, stream_, offset_ >> 2);
  uint32_t v = block[offset_ & 3];
  ++offset_;
  return v;
}

uint64_t Philox::next_u64() {
  uint64_t hi = next_u32();
  return (hi << 32) | next_u32();
}

double Philox::uniform() { return double(next_u64() >> 11) * (1.0 / 9007199254740992.0); }

float Philox::uniform_f32() { return float(next_u32() >> 8) * (1.0f / 16777216.0f); }

double Philox::normal() {
  double u1 = uniform(), u2 = uniform();
  if (u1 < 1e-300) u1 = 1e-300;
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
}

uint64_t Philox::below(uint64_t n) {
  if (n <= 1) return 0;
  uint64_t limit = UINT64_MAX - UINT64_MAX % n;
  uint64_t v;
  do v = next_u64(); while (v >= limit);
  return v % n;
}

}  // namespace moe
