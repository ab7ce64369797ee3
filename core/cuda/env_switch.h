// The CUDA backend's opt-in switches (MOE_FLASH_ASYNC, MOE_WGMMA4_TMA_STORES): paths kept off by
// default until a GPU has measured them, turned on from the environment to compare the two.
#pragma once
#include <cstdlib>
#include <cstring>

#include "core/error.h"

namespace moe::cuda {

// Whether switch `name` is on: '1' on, unset / empty / '0' off, anything else an error naming it
// and what it turns on (`what`). Read at every call, so that a test or a benchmark can run both
// paths in one process.
inline bool opt_in_switch(const char* name, const char* what) {
  const char* v = std::getenv(name);
  if (!v || !*v || std::strcmp(v, "0") == 0) return false;
  MOE_CHECK(std::strcmp(v, "1") == 0, name, "is '", v, "': expected '1' (", what, ") or '0' / unset (off)");
  return true;
}

}  // namespace moe::cuda
