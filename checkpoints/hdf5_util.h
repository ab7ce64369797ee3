// Small RAII layer over the HDF5 C API: files, groups by path, checksummed datasets of any
// shape, extendible row series, scalar attributes, and HDF5 failures turned into moe::Error.
#pragma once
#include <hdf5.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "core/error.h"

namespace moe::h5 {

// Element types stored on disk. u16 carries bf16 bit patterns unchanged.
enum class ElemType : uint8_t { f32, f64, i32, i64, u8, u16 };
const char* elem_type_name(ElemType t);
size_t elem_size(ElemType t);

template <class T> constexpr ElemType elem_type_of();
template <> constexpr ElemType elem_type_of<float>() { return ElemType::f32; }
template <> constexpr ElemType elem_type_of<double>() { return ElemType::f64; }
template <> constexpr ElemType elem_type_of<int32_t>() { return ElemType::i32; }
template <> constexpr ElemType elem_type_of<int64_t>() { return ElemType::i64; }
template <> constexpr ElemType elem_type_of<uint8_t>() { return ElemType::u8; }
template <> constexpr ElemType elem_type_of<uint16_t>() { return ElemType::u16; }

// Turns HDF5's automatic error-stack printing off (once per process): every failure is
// reported through moe::Error instead, with the innermost HDF5 reason appended.
void silence_errors();

// The innermost descriptions on HDF5's current error stack ("" when empty); clears it.
std::string take_error_stack();

// Owns one hid_t and closes it with the matching H5?close.
class Handle {
 public:
  using Closer = herr_t (*)(hid_t);
  Handle() = default;
  Handle(hid_t id, Closer closer) : id_(id), closer_(closer) {}
  ~Handle() { reset(); }
  Handle(Handle&& o) noexcept : id_(o.id_), closer_(o.closer_) { o.id_ = H5I_INVALID_HID; }
  Handle& operator=(Handle&& o) noexcept;
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  void reset();
  herr_t close();  // closes now and returns the status (reset() ignores it)

 private:
  hid_t id_ = H5I_INVALID_HID;
  Closer closer_ = nullptr;
};

struct DatasetInfo {
  std::vector<int64_t> shape;
  ElemType type = ElemType::f64;
  bool fletcher32 = false;
  bool chunked = false;
};

enum class ObjKind : uint8_t { group, dataset, other };
struct Child {
  std::string name;
  ObjKind kind;
};

// One open HDF5 file. Paths are absolute inside the file ("/model/w"); every error message
// names the file and the object. Objects are opened by path per call: simple, and cheap next to
// the data they move.
class File {
 public:
  enum class Mode { read, read_write };
  // Creates (truncating) `path`. Object headers and the superblock use the 1.8 file format,
  // whose metadata carries checksums, so a flipped byte in an attribute is caught too.
  // file_locking = false lets other processes (h5py) open the file while this one writes it;
  // the routing log uses that so a run can be watched live.
  static File create(const std::filesystem::path& path, bool file_locking = true);
  static File open(const std::filesystem::path& path, Mode mode, bool file_locking = true);

  File() = default;
  File(File&&) noexcept = default;
  File& operator=(File&&) noexcept = default;
  ~File() = default;  // closes without reporting; call close() to learn of failures

  const std::string& path() const { return path_; }
  bool is_open() const { return id_.valid(); }
  hid_t id() const { return id_.get(); }
  void flush();  // H5Fflush: what was written so far survives a crash of this process
  void close();

  // ---- structure ----
  bool exists(const std::string& obj) const;  // every component of the path exists
  ObjKind kind(const std::string& obj) const;
  void create_group(const std::string& group);  // with missing parents; no-op when it exists
  std::vector<Child> children(const std::string& group) const;  // in name order

  // ---- fixed-size datasets, chunked with Fletcher32 (empty ones are stored unfiltered) ----
  void write(const std::string& dset, ElemType type, const void* data, const std::vector<int64_t>& shape);
  template <class T>
  void write(const std::string& dset, const std::vector<T>& v) {
    write(dset, elem_type_of<T>(), v.data(), {int64_t(v.size())});
  }
  DatasetInfo info(const std::string& dset) const;
  // Reads the whole dataset converted to `type`; `count` must equal its element count.
  void read(const std::string& dset, ElemType type, void* out, size_t count) const;
  template <class T>
  std::vector<T> read(const std::string& dset) const {
    DatasetInfo di = info(dset);
    int64_t n = 1;
    for (int64_t d : di.shape) n *= d;
    std::vector<T> v(static_cast<size_t>(n));
    read(dset, elem_type_of<T>(), v.data(), v.size());
    return v;
  }
  // File offset of the first stored chunk of `dset` (for tests that corrupt bytes on purpose).
  int64_t first_chunk_offset(const std::string& dset) const;

  // ---- row series: extendible along dim 0, chunked, Fletcher32 ----
  // row_shape is the shape of one row ({} for a scalar series). compress adds shuffle + gzip
  // level 1 before the checksum (h5py reads it natively).
  void create_series(const std::string& dset, ElemType type, const std::vector<int64_t>& row_shape,
                     int64_t chunk_rows, bool compress = false);
  int64_t rows(const std::string& dset) const;
  void set_rows(const std::string& dset, int64_t n);  // grow or truncate
  // Writes `n` rows starting at row `start`, growing the dataset as needed.
  void write_rows(const std::string& dset, ElemType type, const void* data, int64_t start, int64_t n);
  // The same through a dataset kept open (open_dataset), whose chunk cache then holds the
  // partly filled last chunk between calls instead of rereading it from the file each time.
  void write_rows(const Handle& d, const std::string& dset, ElemType type, const void* data, int64_t start,
                  int64_t n);
  Handle open_dataset(const std::string& dset) const;

  // ---- attributes on a group or dataset ----
  void set_attr(const std::string& obj, const std::string& name, const std::string& value);
  void set_attr(const std::string& obj, const std::string& name, const char* value) {
    set_attr(obj, name, std::string(value));
  }
  void set_attr(const std::string& obj, const std::string& name, int64_t value);
  void set_attr(const std::string& obj, const std::string& name, double value);
  bool has_attr(const std::string& obj, const std::string& name) const;
  std::vector<std::string> attr_names(const std::string& obj) const;
  std::string attr_string(const std::string& obj, const std::string& name) const;
  int64_t attr_int(const std::string& obj, const std::string& name) const;
  double attr_double(const std::string& obj, const std::string& name) const;
  // "string", "int", "float" or "other": lets readers copy attributes of unknown keys.
  std::string attr_kind(const std::string& obj, const std::string& name) const;

  // Throws moe::Error "hdf5: <file>: <obj>: <what> (<HDF5 reason>)".
  [[noreturn]] void fail(const std::string& obj, const std::string& what) const;

 private:
  Handle open_object(const std::string& obj) const;
  Handle id_;
  std::string path_;
};

// Chunk shape for a dataset of `shape` and element size: whole trailing dims while the chunk
// stays under `target_bytes`, then a slice of the next dim (never above HDF5's 4 GiB limit).
std::vector<hsize_t> chunk_shape(const std::vector<int64_t>& shape, size_t elem_bytes,
                                 size_t target_bytes = size_t(1) << 20);

}  // namespace moe::h5
