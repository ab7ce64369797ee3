// Helpers shared by the data tests: fresh scratch directories under the build tree and an
// assertion that a call throws moe::Error whose one-line message contains given parts.
#pragma once
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "core/error.h"

namespace moe::test {

// build/test_data/<name>, emptied; each test uses its own name so ctest -j can run them together.
inline std::string fresh_dir(const std::string& name) {
  namespace fs = std::filesystem;
  fs::path p = fs::path(MOE_BINARY_DIR) / "test_data" / name;
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}

inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
}

inline std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

#define EXPECT_ERROR_WITH(stmt, ...)                                                        \
  do {                                                                                      \
    bool thrown_ = false;                                                                   \
    try {                                                                                   \
      stmt;                                                                                 \
    } catch (const ::moe::Error& e_) {                                                      \
      thrown_ = true;                                                                       \
      const std::string msg_ = e_.what();                                                   \
      EXPECT_EQ(msg_.find('\n'), std::string::npos) << "multi-line error: " << msg_;        \
      for (const std::string& part_ : std::vector<std::string>{__VA_ARGS__})                \
        EXPECT_NE(msg_.find(part_), std::string::npos) << "missing '" << part_ << "' in: " << msg_; \
    }                                                                                       \
    EXPECT_TRUE(thrown_) << "expected moe::Error from " #stmt;                              \
  } while (0)

}  // namespace moe::test
