// The seeds of the kernel tests' fresh random inputs (test_seed.h adds the line a failed test
// prints). Every seed a test hands to an input generator goes through test_seed(base): the base
// keeps a test's inputs apart from each other, and the run seed mixed into it makes each run draw
// new ones, so over many CI runs the kernels meet many inputs, not the one set a fixed seed would
// pin.
//
// The run seed is MOE_TEST_SEED when set (0: the fixed inputs, test_seed(base) == base), else
// drawn once per process from std::random_device. scripts/test.sh draws one for the whole run and
// prints it first; a failing test prints it too ("[  seed    ] ... MOE_TEST_SEED=n"), and
// `MOE_TEST_SEED=n ctest -R <test>` draws the same inputs again.
#pragma once
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <utility>

namespace moe::test {

inline uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Whether MOE_TEST_SEED is set (an empty value counts as unset).
inline bool run_seed_set() {
  const char* s = std::getenv("MOE_TEST_SEED");
  return s != nullptr && *s != '\0';
}

// A fresh run seed: never 0, which asks for the fixed inputs.
inline uint64_t draw_run_seed() {
  std::random_device rd;
  const uint64_t v = (uint64_t(rd()) << 32) ^ uint64_t(rd());
  return v == 0 ? 1 : v;
}

// A bad value stops the binary with one line: a typo must not silently run other inputs.
inline uint64_t read_or_draw_run_seed() {
  if (run_seed_set()) {
    const char* s = std::getenv("MOE_TEST_SEED");
    char* end = nullptr;
    errno = 0;
    const unsigned long long v = std::strtoull(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || *s == '-') {
      std::fprintf(stderr, "MOE_TEST_SEED: expected an unsigned decimal integer (0: the fixed inputs), got '%s'\n", s);
      std::exit(2);
    }
    return uint64_t(v);
  }
  return draw_run_seed();
}

inline uint64_t run_seed() {
  static const uint64_t seed = read_or_draw_run_seed();
  return seed;
}

// The seed of input `base` in a run seeded `run`: base itself for run 0, else the two mixed.
inline uint64_t mix_seed(uint64_t base, uint64_t run) { return run == 0 ? base : splitmix64(base ^ splitmix64(run)); }

// The seed of one input in this run.
inline uint64_t test_seed(uint64_t base) { return mix_seed(base, run_seed()); }

// For a comparison that only holds away from a decision boundary (a near tie in a top-k that the
// device's fp32 rounding may break either way): the first of base, base + 1000, ... (at most
// `tries`) whose inputs `usable(seed)` accepts, and true; {0, false} when none is. (A fixed seed
// used to be picked by hand to be usable; a fresh one is drawn again instead.)
template <class Usable>
std::pair<uint64_t, bool> first_usable_seed(uint64_t base, Usable usable, int tries = 20) {
  for (int i = 0; i < tries; ++i) {
    const uint64_t seed = base + 1000 * uint64_t(i);
    if (usable(seed)) return {seed, true};
  }
  return {0, false};
}

}  // namespace moe::test
