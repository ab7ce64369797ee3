// llm.c shard writer and the mmap'd token-file reader with its format checks.
// A shard that fails a check is never partly used: open() validates the whole layout first.
#include "data/shard.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <vector>

#include "core/error.h"

namespace moe {

const char* token_format_name(TokenFormat f) {
  switch (f) {
    case TokenFormat::llmc: return "llm.c";
    case TokenFormat::raw_u16: return "raw uint16";
    case TokenFormat::raw_u32: return "raw uint32";
  }
  return "?";
}

TokenFormat parse_token_format(const std::string& name) {
  if (name == "llmc" || name == "llm.c") return TokenFormat::llmc;
  if (name == "u16" || name == "uint16") return TokenFormat::raw_u16;
  if (name == "u32" || name == "uint32") return TokenFormat::raw_u32;
  MOE_FAIL("token format", "unknown format '", name, "' (expected llmc, u16 or u32)");
}

void write_shard(const std::string& path, std::span<const uint16_t> tokens) {
  MOE_CHECK(tokens.size() <= size_t(INT32_MAX), path.c_str(), tokens.size(),
            " tokens do not fit an llm.c shard (at most ", INT32_MAX, ")");
  std::vector<int32_t> header(kShardHeaderInts, 0);
  header[0] = kShardMagic;
  header[1] = kShardVersion;
  header[2] = static_cast<int32_t>(tokens.size());
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    MOE_CHECK(out.good(), tmp.c_str(), "cannot open for writing (", std::strerror(errno), ")");
    out.write(reinterpret_cast<const char*>(header.data()), kShardHeaderBytes);
    out.write(reinterpret_cast<const char*>(tokens.data()), std::streamsize(tokens.size() * 2));
    out.flush();
    MOE_CHECK(out.good(), tmp.c_str(), "write failed (", std::strerror(errno), ")");
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  MOE_CHECK(!ec, path.c_str(), "cannot rename ", tmp, " into place (", ec.message(), ")");
}

struct TokenFile::Mapping {
  void* addr = nullptr;
  size_t bytes = 0;
  ~Mapping() {
    if (addr) munmap(addr, bytes);
  }
};

namespace {
std::string with_remedy(const std::string& remedy) { return remedy.empty() ? "" : "; " + remedy; }
}  // namespace

TokenFile TokenFile::open(const std::string& path, TokenFormat format, const std::string& remedy) {
  const std::string fix = with_remedy(remedy);
  int fd = ::open(path.c_str(), O_RDONLY);
  MOE_CHECK(fd >= 0, path.c_str(), "cannot open ", token_format_name(format), " token file (",
            std::strerror(errno), ")", fix);
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    MOE_FAIL(path.c_str(), "not a regular file", fix);
  }
  const size_t bytes = size_t(st.st_size);
  auto map = std::make_shared<Mapping>();
  if (bytes > 0) {
    void* addr = mmap(nullptr, bytes, PROT_READ, MAP_PRIVATE, fd, 0);
    if (addr == MAP_FAILED) {
      int err = errno;
      ::close(fd);
      MOE_FAIL(path.c_str(), "mmap of ", bytes, " bytes failed (", std::strerror(err), ")");
    }
    map->addr = addr;
    map->bytes = bytes;
  }
  ::close(fd);  // the mapping stays valid without the descriptor

  TokenFile f;
  f.map_ = map;
  f.path_ = path;
  f.format_ = format;
  const auto* base = static_cast<const unsigned char*>(map->addr);
  if (format == TokenFormat::llmc) {
    MOE_CHECK(bytes >= kShardHeaderBytes, path.c_str(), "truncated: ", bytes,
              " bytes, shorter than the llm.c header (", kShardHeaderBytes, " bytes)", fix);
    int32_t header[3];
    std::memcpy(header, base, sizeof(header));
    MOE_CHECK(header[0] == kShardMagic, path.c_str(), "bad magic ", header[0], " (expected ", kShardMagic,
              ", an llm.c shard)", fix);
    MOE_CHECK(header[1] == kShardVersion, path.c_str(), "unsupported llm.c shard version ", header[1],
              " (expected ", kShardVersion, ", uint16 tokens)", fix);
    MOE_CHECK(header[2] >= 0, path.c_str(), "negative token count ", header[2], " in the header", fix);
    const size_t n = size_t(header[2]);
    const size_t want = kShardHeaderBytes + 2 * n;
    MOE_CHECK(bytes >= want, path.c_str(), "truncated: header says ", n, " tokens (", want,
              " bytes) but the file has ", bytes, " bytes", fix);
    MOE_CHECK(bytes == want, path.c_str(), bytes - want, " unexpected bytes after the ", n,
              " tokens the header announces (expected ", want, " bytes)", fix);
    f.count_ = n;
    f.width_ = 2;
    f.u16_ = reinterpret_cast<const uint16_t*>(base + kShardHeaderBytes);
  } else {
    const size_t w = format == TokenFormat::raw_u16 ? 2 : 4;
    MOE_CHECK(bytes % w == 0, path.c_str(), bytes, " bytes is not a whole number of ", w,
              "-byte tokens (", token_format_name(format), "); truncated?", fix);
    f.count_ = bytes / w;
    f.width_ = w;
    if (w == 2) f.u16_ = reinterpret_cast<const uint16_t*>(base);
    else f.u32_ = reinterpret_cast<const uint32_t*>(base);
  }
  return f;
}

void TokenFile::copy_to(size_t begin, size_t n, int32_t* out) const {
  MOE_CHECK(begin <= count_ && n <= count_ - begin, path_.c_str(), "token range [", begin, ", ",
            begin + n, ") outside the file's ", count_, " tokens");
  if (width_ == 2) {
    const uint16_t* src = u16_ + begin;
    for (size_t i = 0; i < n; ++i) out[i] = int32_t(src[i]);
  } else {
    const uint32_t* src = u32_ + begin;
    for (size_t i = 0; i < n; ++i) {
      MOE_CHECK(src[i] <= uint32_t(INT32_MAX), path_.c_str(), "token ", src[i], " at ", begin + i,
                " does not fit an int32 id");
      out[i] = int32_t(src[i]);
    }
  }
}

}  // namespace moe
