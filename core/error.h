// The one exception type of moetrain and the check macro that raises it.
// Messages name the op (or file / key / tensor) and what was expected, on one line.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace moe {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

namespace detail {
template <class... Args>
[[noreturn]] void throw_error(const char* where, const Args&... args) {
  std::ostringstream os;
  os << where << ": ";
  (os << ... << args);
  throw Error(os.str());
}
}  // namespace detail

}  // namespace moe

// MOE_CHECK(cond, "op_name", "message parts", ...): throws moe::Error("op_name: message").
#define MOE_CHECK(cond, where, ...)                              \
  do {                                                           \
    if (!(cond)) ::moe::detail::throw_error(where, __VA_ARGS__); \
  } while (0)
#define MOE_FAIL(where, ...) ::moe::detail::throw_error(where, __VA_ARGS__)
