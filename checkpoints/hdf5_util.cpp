// HDF5 C API wrappers: every call's status is checked and a failure becomes one moe::Error line
// naming the file, the object and HDF5's own innermost reason (e.g. the Fletcher32 mismatch).
#include "checkpoints/hdf5_util.h"

#include <algorithm>
#include <cstring>
#include <mutex>
#include <sstream>

namespace moe::h5 {

const char* elem_type_name(ElemType t) {
  switch (t) {
    case ElemType::f32: return "f32";
    case ElemType::f64: return "f64";
    case ElemType::i32: return "i32";
    case ElemType::i64: return "i64";
    case ElemType::u8: return "u8";
    case ElemType::u16: return "u16";
  }
  return "?";
}

size_t elem_size(ElemType t) {
  switch (t) {
    case ElemType::f32: return 4;
    case ElemType::f64: return 8;
    case ElemType::i32: return 4;
    case ElemType::i64: return 8;
    case ElemType::u8: return 1;
    case ElemType::u16: return 2;
  }
  return 0;
}

namespace {

hid_t mem_type(ElemType t) {
  switch (t) {
    case ElemType::f32: return H5T_NATIVE_FLOAT;
    case ElemType::f64: return H5T_NATIVE_DOUBLE;
    case ElemType::i32: return H5T_NATIVE_INT32;
    case ElemType::i64: return H5T_NATIVE_INT64;
    case ElemType::u8: return H5T_NATIVE_UINT8;
    case ElemType::u16: return H5T_NATIVE_UINT16;
  }
  return H5T_NATIVE_DOUBLE;
}

// Little-endian on disk whatever the host, so files move between machines.
hid_t file_type(ElemType t) {
  switch (t) {
    case ElemType::f32: return H5T_IEEE_F32LE;
    case ElemType::f64: return H5T_IEEE_F64LE;
    case ElemType::i32: return H5T_STD_I32LE;
    case ElemType::i64: return H5T_STD_I64LE;
    case ElemType::u8: return H5T_STD_U8LE;
    case ElemType::u16: return H5T_STD_U16LE;
  }
  return H5T_IEEE_F64LE;
}

herr_t walk_cb(unsigned, const H5E_error2_t* e, void* data) {
  auto* out = static_cast<std::vector<std::string>*>(data);
  if (e->desc && *e->desc) out->emplace_back(e->desc);
  return 0;
}

int64_t numel_of(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string dims_str(const std::vector<int64_t>& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << "]";
  return os.str();
}

}  // namespace

void silence_errors() {
  // Per thread in thread-safe builds, so it is repeated on every open rather than done once.
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
}

std::string take_error_stack() {
  std::vector<std::string> msgs;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, walk_cb, &msgs);
  H5Eclear2(H5E_DEFAULT);
  if (msgs.empty()) return "";
  // The deepest entries say what actually went wrong; the outer ones only which API call.
  std::string out = msgs.back();
  if (msgs.size() >= 2 && msgs[msgs.size() - 2] != out) out = msgs[msgs.size() - 2] + ": " + out;
  return out;
}

Handle& Handle::operator=(Handle&& o) noexcept {
  if (this != &o) {
    reset();
    id_ = o.id_;
    closer_ = o.closer_;
    o.id_ = H5I_INVALID_HID;
  }
  return *this;
}

void Handle::reset() {
  if (id_ >= 0 && closer_) closer_(id_);
  id_ = H5I_INVALID_HID;
}

herr_t Handle::close() {
  herr_t s = 0;
  if (id_ >= 0 && closer_) s = closer_(id_);
  id_ = H5I_INVALID_HID;
  return s;
}

std::vector<hsize_t> chunk_shape(const std::vector<int64_t>& shape, size_t elem_bytes, size_t target_bytes) {
  std::vector<hsize_t> chunk(shape.size(), 1);
  size_t bytes = elem_bytes;
  for (int64_t i = int64_t(shape.size()) - 1; i >= 0; --i) {
    size_t d = size_t(std::max<int64_t>(shape[size_t(i)], 1));
    if (bytes * d <= target_bytes) {
      chunk[size_t(i)] = d;
      bytes *= d;
      continue;
    }
    chunk[size_t(i)] = std::max<size_t>(1, target_bytes / bytes);
    break;  // outer dims stay 1
  }
  return chunk;
}

// ------------------------------------------------------------------------------------ File

void File::fail(const std::string& obj, const std::string& what) const {
  std::string reason = take_error_stack();
  std::ostringstream os;
  os << "hdf5: " << path_;
  if (!obj.empty()) os << ": " << obj;
  os << ": " << what;
  if (!reason.empty()) os << " (" << reason << ")";
  throw Error(os.str());
}

namespace {
Handle make_fapl(const File& f, bool file_locking) {
  Handle fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
  if (!fapl.valid() || H5Pset_libver_bounds(fapl.get(), H5F_LIBVER_V18, H5F_LIBVER_LATEST) < 0 ||
      (!file_locking && H5Pset_file_locking(fapl.get(), 0, 1) < 0))
    f.fail("", "cannot set up the file access properties");
  return fapl;
}
}  // namespace

File File::create(const std::filesystem::path& path, bool file_locking) {
  silence_errors();
  File f;
  f.path_ = path.string();
  Handle fapl = make_fapl(f, file_locking);
  Handle fcpl(H5Pcreate(H5P_FILE_CREATE), H5Pclose);
  // Dense attribute storage from the first attribute: attributes over 64 KiB (a long recipe)
  // only fit there, and its fractal heap is checksummed like the object headers.
  if (!fcpl.valid() || H5Pset_attr_phase_change(fcpl.get(), 0, 0) < 0)
    f.fail("", "cannot set up the file creation properties");
  hid_t id = H5Fcreate(f.path_.c_str(), H5F_ACC_TRUNC, fcpl.get(), fapl.get());
  if (id < 0) f.fail("", "cannot create the file");
  f.id_ = Handle(id, H5Fclose);
  return f;
}

File File::open(const std::filesystem::path& path, Mode mode, bool file_locking) {
  silence_errors();
  File f;
  f.path_ = path.string();
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    std::ostringstream os;
    os << "hdf5: " << f.path_ << ": no such file";
    throw Error(os.str());
  }
  Handle fapl = make_fapl(f, file_locking);
  hid_t id = H5Fopen(f.path_.c_str(), mode == Mode::read ? H5F_ACC_RDONLY : H5F_ACC_RDWR, fapl.get());
  if (id < 0) f.fail("", "cannot open as HDF5");
  f.id_ = Handle(id, H5Fclose);
  return f;
}

void File::flush() {
  if (H5Fflush(id_.get(), H5F_SCOPE_GLOBAL) < 0) fail("", "flush failed");
}

void File::close() {
  if (!id_.valid()) return;
  if (id_.close() < 0) fail("", "close failed (data may not have reached the disk)");
}

bool File::exists(const std::string& obj) const {
  if (obj == "/" || obj.empty()) return true;
  // H5Lexists fails (rather than answering false) when a parent is missing: walk the prefixes.
  size_t pos = 0;
  while (true) {
    size_t next = obj.find('/', pos + 1);
    std::string prefix = obj.substr(0, next);
    if (!prefix.empty() && prefix != "/") {
      htri_t e = H5Lexists(id_.get(), prefix.c_str(), H5P_DEFAULT);
      if (e < 0) fail(prefix, "cannot look up the link");
      if (e == 0) return false;
    }
    if (next == std::string::npos) return true;
    pos = next;
  }
}

Handle File::open_object(const std::string& obj) const {
  if (!exists(obj)) fail(obj, "no such object");
  hid_t id = H5Oopen(id_.get(), obj.c_str(), H5P_DEFAULT);
  if (id < 0) fail(obj, "cannot open the object");
  return Handle(id, H5Oclose);
}

Handle File::open_dataset(const std::string& dset) const {
  if (!exists(dset)) fail(dset, "no such dataset");
  hid_t id = H5Dopen2(id_.get(), dset.c_str(), H5P_DEFAULT);
  if (id < 0) fail(dset, "cannot open the dataset");
  return Handle(id, H5Dclose);
}

ObjKind File::kind(const std::string& obj) const {
  Handle o = open_object(obj);
  H5I_type_t t = H5Iget_type(o.get());
  if (t == H5I_GROUP) return ObjKind::group;
  if (t == H5I_DATASET) return ObjKind::dataset;
  return ObjKind::other;
}

void File::create_group(const std::string& group) {
  if (exists(group)) {
    if (kind(group) != ObjKind::group) fail(group, "exists and is not a group");
    return;
  }
  Handle lcpl(H5Pcreate(H5P_LINK_CREATE), H5Pclose);
  Handle gcpl(H5Pcreate(H5P_GROUP_CREATE), H5Pclose);
  if (H5Pset_create_intermediate_group(lcpl.get(), 1) < 0 || H5Pset_attr_phase_change(gcpl.get(), 0, 0) < 0)
    fail(group, "cannot set up the group properties");
  hid_t g = H5Gcreate2(id_.get(), group.c_str(), lcpl.get(), gcpl.get(), H5P_DEFAULT);
  if (g < 0) fail(group, "cannot create the group");
  H5Gclose(g);
}

namespace {
struct IterState {
  std::vector<std::string> names;
};
herr_t link_cb(hid_t, const char* name, const H5L_info_t*, void* data) {
  static_cast<IterState*>(data)->names.emplace_back(name);
  return 0;
}
herr_t attr_cb(hid_t, const char* name, const H5A_info_t*, void* data) {
  static_cast<IterState*>(data)->names.emplace_back(name);
  return 0;
}
}  // namespace

std::vector<Child> File::children(const std::string& group) const {
  Handle g = open_object(group);
  if (H5Iget_type(g.get()) != H5I_GROUP) fail(group, "is not a group");
  IterState st;
  hsize_t idx = 0;
  if (H5Literate(g.get(), H5_INDEX_NAME, H5_ITER_INC, &idx, link_cb, &st) < 0) fail(group, "cannot list the group");
  std::vector<Child> out;
  for (auto& n : st.names) {
    std::string full = (group == "/" ? "/" : group + "/") + n;
    out.push_back({n, kind(full)});
  }
  return out;
}

void File::write(const std::string& dset, ElemType type, const void* data, const std::vector<int64_t>& shape) {
  if (shape.empty()) fail(dset, "rank-0 datasets cannot be chunked or checksummed; store them with shape [1]");
  if (exists(dset)) fail(dset, "already exists");
  int64_t n = numel_of(shape);
  std::vector<hsize_t> dims(shape.begin(), shape.end());
  Handle space(H5Screate_simple(int(dims.size()), dims.data(), nullptr), H5Sclose);
  if (!space.valid()) fail(dset, "cannot create a dataspace of shape " + dims_str(shape));
  Handle dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  Handle lcpl(H5Pcreate(H5P_LINK_CREATE), H5Pclose);
  if (H5Pset_create_intermediate_group(lcpl.get(), 1) < 0) fail(dset, "cannot set up link properties");
  if (n > 0) {
    // Fletcher32 runs per chunk, so even small tensors are chunked.
    std::vector<hsize_t> chunk = chunk_shape(shape, elem_size(type));
    if (H5Pset_chunk(dcpl.get(), int(chunk.size()), chunk.data()) < 0 || H5Pset_fletcher32(dcpl.get()) < 0)
      fail(dset, "cannot set chunking / Fletcher32");
  }
  hid_t d = H5Dcreate2(id_.get(), dset.c_str(), file_type(type), space.get(), lcpl.get(), dcpl.get(), H5P_DEFAULT);
  if (d < 0) fail(dset, "cannot create the dataset");
  Handle dh(d, H5Dclose);
  if (n > 0 && H5Dwrite(d, mem_type(type), H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0)
    fail(dset, "write failed");
  if (dh.close() < 0) fail(dset, "closing the dataset failed");
}

DatasetInfo File::info(const std::string& dset) const {
  Handle d = open_dataset(dset);
  DatasetInfo di;
  Handle space(H5Dget_space(d.get()), H5Sclose);
  int nd = H5Sget_simple_extent_ndims(space.get());
  if (nd < 0) fail(dset, "cannot read the dataspace");
  std::vector<hsize_t> dims(static_cast<size_t>(nd));
  H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
  di.shape.assign(dims.begin(), dims.end());
  Handle type(H5Dget_type(d.get()), H5Tclose);
  H5T_class_t cls = H5Tget_class(type.get());
  size_t sz = H5Tget_size(type.get());
  if (cls == H5T_FLOAT && sz == 4) di.type = ElemType::f32;
  else if (cls == H5T_FLOAT && sz == 8) di.type = ElemType::f64;
  else if (cls == H5T_INTEGER) {
    bool sgn = H5Tget_sign(type.get()) == H5T_SGN_2;
    if (sgn && sz == 4) di.type = ElemType::i32;
    else if (sgn && sz == 8) di.type = ElemType::i64;
    else if (!sgn && sz == 1) di.type = ElemType::u8;
    else if (!sgn && sz == 2) di.type = ElemType::u16;
    else fail(dset, "unsupported integer type of " + std::to_string(sz) + " bytes");
  } else {
    fail(dset, "unsupported element type (class " + std::to_string(int(cls)) + ")");
  }
  Handle dcpl(H5Dget_create_plist(d.get()), H5Pclose);
  di.chunked = H5Pget_layout(dcpl.get()) == H5D_CHUNKED;
  int nf = H5Pget_nfilters(dcpl.get());
  for (int i = 0; i < nf; ++i) {
    unsigned flags = 0;
    size_t ncd = 0;
    unsigned cfg = 0;
    if (H5Pget_filter2(dcpl.get(), unsigned(i), &flags, &ncd, nullptr, 0, nullptr, &cfg) == H5Z_FILTER_FLETCHER32)
      di.fletcher32 = true;
  }
  return di;
}

void File::read(const std::string& dset, ElemType type, void* out, size_t count) const {
  DatasetInfo di = info(dset);
  int64_t n = numel_of(di.shape);
  if (size_t(n) != count)
    fail(dset, "holds " + std::to_string(n) + " elements of shape " + dims_str(di.shape) + ", expected " +
                   std::to_string(count));
  if (n == 0) return;
  Handle d = open_dataset(dset);
  if (H5Dread(d.get(), mem_type(type), H5S_ALL, H5S_ALL, H5P_DEFAULT, out) < 0)
    fail(dset, "read failed, the data is corrupt");
}

int64_t File::first_chunk_offset(const std::string& dset) const {
  Handle d = open_dataset(dset);
  Handle space(H5Dget_space(d.get()), H5Sclose);
  unsigned mask = 0;
  haddr_t addr = 0;
  hsize_t size = 0;
  if (H5Dget_chunk_info(d.get(), space.get(), 0, nullptr, &mask, &addr, &size) < 0)
    fail(dset, "cannot locate the first chunk");
  return int64_t(addr);
}

// ---------------------------------------------------------------------------------- series

void File::create_series(const std::string& dset, ElemType type, const std::vector<int64_t>& row_shape,
                         int64_t chunk_rows, bool compress) {
  if (exists(dset)) fail(dset, "already exists");
  std::vector<hsize_t> dims{0}, maxdims{H5S_UNLIMITED}, chunk{hsize_t(std::max<int64_t>(1, chunk_rows))};
  for (int64_t d : row_shape) {
    dims.push_back(hsize_t(d));
    maxdims.push_back(hsize_t(d));
    chunk.push_back(hsize_t(std::max<int64_t>(1, d)));
  }
  Handle space(H5Screate_simple(int(dims.size()), dims.data(), maxdims.data()), H5Sclose);
  Handle dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  Handle lcpl(H5Pcreate(H5P_LINK_CREATE), H5Pclose);
  if (!space.valid() || H5Pset_create_intermediate_group(lcpl.get(), 1) < 0 ||
      H5Pset_chunk(dcpl.get(), int(chunk.size()), chunk.data()) < 0)
    fail(dset, "cannot set up an extendible dataset");
  if (compress && (H5Pset_shuffle(dcpl.get()) < 0 || H5Pset_deflate(dcpl.get(), 1) < 0))
    fail(dset, "cannot set up compression");
  if (H5Pset_fletcher32(dcpl.get()) < 0) fail(dset, "cannot set up Fletcher32");
  hid_t d = H5Dcreate2(id_.get(), dset.c_str(), file_type(type), space.get(), lcpl.get(), dcpl.get(), H5P_DEFAULT);
  if (d < 0) fail(dset, "cannot create the dataset");
  H5Dclose(d);
}

int64_t File::rows(const std::string& dset) const {
  DatasetInfo di = info(dset);
  if (di.shape.empty()) fail(dset, "is rank 0, not a row series");
  return di.shape[0];
}

void File::set_rows(const std::string& dset, int64_t n) {
  DatasetInfo di = info(dset);
  if (di.shape.empty()) fail(dset, "is rank 0, not a row series");
  std::vector<hsize_t> dims(di.shape.begin(), di.shape.end());
  dims[0] = hsize_t(n);
  Handle d = open_dataset(dset);
  if (H5Dset_extent(d.get(), dims.data()) < 0) fail(dset, "cannot resize to " + std::to_string(n) + " rows");
}

void File::write_rows(const std::string& dset, ElemType type, const void* data, int64_t start, int64_t n) {
  if (n <= 0) return;
  Handle d = open_dataset(dset);
  write_rows(d, dset, type, data, start, n);
}

void File::write_rows(const Handle& d, const std::string& dset, ElemType type, const void* data, int64_t start,
                      int64_t n) {
  if (n <= 0) return;
  Handle fspace(H5Dget_space(d.get()), H5Sclose);
  int nd = H5Sget_simple_extent_ndims(fspace.get());
  if (nd < 1) fail(dset, "is rank 0, not a row series");
  std::vector<hsize_t> dims(static_cast<size_t>(nd));
  H5Sget_simple_extent_dims(fspace.get(), dims.data(), nullptr);
  if (hsize_t(start + n) > dims[0]) {
    dims[0] = hsize_t(start + n);
    if (H5Dset_extent(d.get(), dims.data()) < 0) fail(dset, "cannot grow to " + std::to_string(start + n) + " rows");
    fspace = Handle(H5Dget_space(d.get()), H5Sclose);
  }
  std::vector<hsize_t> off(dims.size(), 0), cnt(dims);
  off[0] = hsize_t(start);
  cnt[0] = hsize_t(n);
  if (H5Sselect_hyperslab(fspace.get(), H5S_SELECT_SET, off.data(), nullptr, cnt.data(), nullptr) < 0)
    fail(dset, "cannot select rows");
  Handle mspace(H5Screate_simple(int(cnt.size()), cnt.data(), nullptr), H5Sclose);
  if (H5Dwrite(d.get(), mem_type(type), mspace.get(), fspace.get(), H5P_DEFAULT, data) < 0)
    fail(dset, "writing rows " + std::to_string(start) + ".." + std::to_string(start + n) + " failed");
}

// ------------------------------------------------------------------------------ attributes

namespace {
void replace_attr(const File& f, hid_t obj, const std::string& objname, const std::string& name) {
  htri_t e = H5Aexists(obj, name.c_str());
  if (e < 0) f.fail(objname, "cannot look up attribute '" + name + "'");
  if (e > 0 && H5Adelete(obj, name.c_str()) < 0) f.fail(objname, "cannot replace attribute '" + name + "'");
}

void write_scalar_attr(const File& f, hid_t obj, const std::string& objname, const std::string& name, hid_t ftype,
                       hid_t mtype, const void* value) {
  replace_attr(f, obj, objname, name);
  Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  hid_t a = H5Acreate2(obj, name.c_str(), ftype, space.get(), H5P_DEFAULT, H5P_DEFAULT);
  if (a < 0) f.fail(objname, "cannot create attribute '" + name + "'");
  Handle ah(a, H5Aclose);
  if (H5Awrite(a, mtype, value) < 0) f.fail(objname, "cannot write attribute '" + name + "'");
}
}  // namespace

void File::set_attr(const std::string& obj, const std::string& name, const std::string& value) {
  Handle o = open_object(obj);
  // Fixed-length, stored inside the (checksummed) attribute message; a variable-length string
  // would live in the global heap, which HDF5 does not checksum.
  Handle t(H5Tcopy(H5T_C_S1), H5Tclose);
  if (H5Tset_size(t.get(), std::max<size_t>(1, value.size())) < 0 || H5Tset_strpad(t.get(), H5T_STR_NULLPAD) < 0 ||
      H5Tset_cset(t.get(), H5T_CSET_UTF8) < 0)
    fail(obj, "cannot make a string type for attribute '" + name + "'");
  std::string buf = value.empty() ? std::string(1, '\0') : value;
  write_scalar_attr(*this, o.get(), obj, name, t.get(), t.get(), buf.data());
}

void File::set_attr(const std::string& obj, const std::string& name, int64_t value) {
  Handle o = open_object(obj);
  write_scalar_attr(*this, o.get(), obj, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &value);
}

void File::set_attr(const std::string& obj, const std::string& name, double value) {
  Handle o = open_object(obj);
  write_scalar_attr(*this, o.get(), obj, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &value);
}

bool File::has_attr(const std::string& obj, const std::string& name) const {
  Handle o = open_object(obj);
  htri_t e = H5Aexists(o.get(), name.c_str());
  if (e < 0) fail(obj, "cannot look up attribute '" + name + "'");
  return e > 0;
}

std::vector<std::string> File::attr_names(const std::string& obj) const {
  Handle o = open_object(obj);
  IterState st;
  hsize_t idx = 0;
  if (H5Aiterate2(o.get(), H5_INDEX_NAME, H5_ITER_INC, &idx, attr_cb, &st) < 0) fail(obj, "cannot list attributes");
  return st.names;
}

namespace {
Handle open_attr(const File& f, hid_t obj, const std::string& objname, const std::string& name) {
  htri_t e = H5Aexists(obj, name.c_str());
  if (e < 0) f.fail(objname, "cannot read attribute '" + name + "'");
  if (e == 0) f.fail(objname, "missing attribute '" + name + "'");
  hid_t a = H5Aopen(obj, name.c_str(), H5P_DEFAULT);
  if (a < 0) f.fail(objname, "cannot open attribute '" + name + "'");
  return Handle(a, H5Aclose);
}
}  // namespace

std::string File::attr_kind(const std::string& obj, const std::string& name) const {
  Handle o = open_object(obj);
  Handle a = open_attr(*this, o.get(), obj, name);
  Handle t(H5Aget_type(a.get()), H5Tclose);
  switch (H5Tget_class(t.get())) {
    case H5T_STRING: return "string";
    case H5T_INTEGER: return "int";
    case H5T_FLOAT: return "float";
    default: return "other";
  }
}

std::string File::attr_string(const std::string& obj, const std::string& name) const {
  Handle o = open_object(obj);
  Handle a = open_attr(*this, o.get(), obj, name);
  Handle t(H5Aget_type(a.get()), H5Tclose);
  if (H5Tget_class(t.get()) != H5T_STRING) fail(obj, "attribute '" + name + "' is not a string");
  if (H5Tis_variable_str(t.get()) > 0) {  // written by other tools (h5py's default)
    Handle mt(H5Tcopy(H5T_C_S1), H5Tclose);
    H5Tset_size(mt.get(), H5T_VARIABLE);
    char* p = nullptr;
    if (H5Aread(a.get(), mt.get(), &p) < 0) fail(obj, "cannot read attribute '" + name + "'");
    std::string s = p ? p : "";
    H5free_memory(p);
    return s;
  }
  size_t sz = H5Tget_size(t.get());
  std::string s(sz, '\0');
  if (H5Aread(a.get(), t.get(), s.data()) < 0) fail(obj, "cannot read attribute '" + name + "'");
  s.resize(std::strlen(s.c_str()) < sz ? std::strlen(s.c_str()) : sz);
  return s;
}

int64_t File::attr_int(const std::string& obj, const std::string& name) const {
  Handle o = open_object(obj);
  Handle a = open_attr(*this, o.get(), obj, name);
  Handle t(H5Aget_type(a.get()), H5Tclose);
  if (H5Tget_class(t.get()) != H5T_INTEGER) fail(obj, "attribute '" + name + "' is not an integer");
  int64_t v = 0;
  if (H5Aread(a.get(), H5T_NATIVE_INT64, &v) < 0) fail(obj, "cannot read attribute '" + name + "'");
  return v;
}

double File::attr_double(const std::string& obj, const std::string& name) const {
  Handle o = open_object(obj);
  Handle a = open_attr(*this, o.get(), obj, name);
  Handle t(H5Aget_type(a.get()), H5Tclose);
  H5T_class_t c = H5Tget_class(t.get());
  if (c != H5T_FLOAT && c != H5T_INTEGER) fail(obj, "attribute '" + name + "' is not a number");
  double v = 0;
  if (H5Aread(a.get(), H5T_NATIVE_DOUBLE, &v) < 0) fail(obj, "cannot read attribute '" + name + "'");
  return v;
}

}  // namespace moe::h5
