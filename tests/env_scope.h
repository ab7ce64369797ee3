// An environment variable set (or unset) for a scope and restored after it, also when a failed
// ASSERT returns early: how tests switch the MOE_* choices read at every call.
#pragma once
#include <cstdlib>
#include <optional>
#include <string>

namespace moe::test {

class EnvScope {
 public:
  // value nullptr: unset for the scope.
  EnvScope(const char* name, const char* value) : name_(name) {
    if (const char* v = std::getenv(name)) old_ = v;
    if (value)
      setenv(name, value, 1);
    else
      unsetenv(name);
  }
  ~EnvScope() {
    if (old_)
      setenv(name_.c_str(), old_->c_str(), 1);
    else
      unsetenv(name_.c_str());
  }
  EnvScope(const EnvScope&) = delete;
  EnvScope& operator=(const EnvScope&) = delete;

 private:
  std::string name_;
  std::optional<std::string> old_;
};

}  // namespace moe::test
