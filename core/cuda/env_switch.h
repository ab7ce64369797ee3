// The CUDA backend's switches between two implementations of one kernel (MOE_FLASH_ASYNC,
// MOE_WGMMA4_TMA_STORES): read from the environment at every call, so that a test or a benchmark
// can run both paths in one process, with a default where it is unset.
#pragma once
#include <cstdlib>
#include <cstring>

#include "core/error.h"

namespace moe::cuda {

// Whether switch `name` is on: '1' on, '0' off, unset / empty `default_on`, anything else an error
// naming it and what it turns on (`what`).
inline bool env_switch(const char* name, const char* what, bool default_on) {
  const char* v = std::getenv(name);
  if (!v || !*v) return default_on;
  if (std::strcmp(v, "0") == 0) return false;
  MOE_CHECK(std::strcmp(v, "1") == 0, name, "is '", v, "': expected '1' (", what, "), '0' (off) or unset (",
            default_on ? "on" : "off", " here)");
  return true;
}

// A path kept off by default until a GPU measures it better.
inline bool opt_in_switch(const char* name, const char* what) { return env_switch(name, what, false); }

}  // namespace moe::cuda
