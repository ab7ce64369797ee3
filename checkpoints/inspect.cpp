// describe_h5: walks the file depth first in name order and prints one line per object, with
// min / mean / max of numeric data so a glance shows NaNs, dead experts or an all-zero tensor.
#include "checkpoints/inspect.h"

#include <algorithm>
#include <cmath>
#include <iomanip>
#include <limits>
#include <sstream>

#include "checkpoints/hdf5_util.h"
#include "core/dtype.h"

namespace moe {

namespace fs = std::filesystem;

namespace {

std::string shape_text(const std::vector<int64_t>& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << "]";
  return os.str();
}

std::string short_text(const std::string& s) {
  bool multiline = s.find('\n') != std::string::npos;
  if (s.size() <= 60 && !multiline) return "\"" + s + "\"";
  std::string out = "<text, " + std::to_string(s.size()) + " bytes";
  if (multiline) out += ", " + std::to_string(std::count(s.begin(), s.end(), '\n')) + " lines";
  return out + ">";
}

void print_attrs(const h5::File& f, const std::string& obj, std::ostream& out, const std::string& indent) {
  for (const std::string& a : f.attr_names(obj)) {
    std::string kind = f.attr_kind(obj, a);
    out << indent << "@" << a << " = ";
    if (kind == "string") out << short_text(f.attr_string(obj, a));
    else if (kind == "int") out << f.attr_int(obj, a);
    else if (kind == "float") out << std::setprecision(8) << f.attr_double(obj, a);
    else out << "<unsupported type>";
    out << "\n";
  }
}

int describe_group(const h5::File& f, const std::string& group, std::ostream& out, int depth) {
  int bad = 0;
  std::string indent(size_t(depth) * 2, ' ');
  for (const h5::Child& c : f.children(group)) {
    std::string p = (group == "/" ? "/" : group + "/") + c.name;
    if (c.kind == h5::ObjKind::group) {
      out << indent << c.name << "/\n";
      print_attrs(f, p, out, indent + "  ");
      bad += describe_group(f, p, out, depth + 1);
      continue;
    }
    if (c.kind != h5::ObjKind::dataset) {
      out << indent << c.name << "  <not a group or dataset>\n";
      continue;
    }
    h5::DatasetInfo di = f.info(p);
    int64_t n = 1;
    for (int64_t d : di.shape) n *= d;
    out << indent << c.name << "  " << h5::elem_type_name(di.type) << " " << shape_text(di.shape)
        << (di.fletcher32 ? "  fletcher32" : "  unchecked");
    std::string kind = f.has_attr(p, "kind") ? f.attr_string(p, "kind") : "";
    try {
      if (kind == "string") {
        std::string s(size_t(n), '\0');
        f.read(p, h5::ElemType::u8, s.data(), s.size());
        out << "  " << short_text(s);
      } else if (n > 0) {
        std::vector<double> v(static_cast<size_t>(n));
        if (f.has_attr(p, "dtype") && f.attr_string(p, "dtype") == "bf16") {  // stored as raw bits
          std::vector<uint16_t> bits(v.size());
          f.read(p, h5::ElemType::u16, bits.data(), bits.size());
          for (size_t i = 0; i < v.size(); ++i) v[i] = bf16_to_float(bf16{bits[i]});
        } else {
          f.read(p, h5::ElemType::f64, v.data(), v.size());
        }
        double lo = std::numeric_limits<double>::infinity(), hi = -lo, sum = 0;
        int64_t finite = 0;
        for (double x : v)
          if (std::isfinite(x)) {
            lo = std::min(lo, x);
            hi = std::max(hi, x);
            sum += x;
            ++finite;
          }
        out << std::setprecision(6);
        if (finite > 0) out << "  min " << lo << " mean " << sum / double(finite) << " max " << hi;
        if (finite < n) out << "  non-finite " << (n - finite);
      }
      out << "\n";
    } catch (const Error& e) {
      out << "  CORRUPT: " << e.what() << "\n";
      ++bad;
    }
    print_attrs(f, p, out, indent + "  ");
  }
  return bad;
}

}  // namespace

int describe_h5(const fs::path& path, std::ostream& out) {
  std::error_code ec;
  fs::path file = fs::is_directory(path, ec) ? path / "ckpt.h5" : path;
  h5::File f = h5::File::open(file, h5::File::Mode::read, /*file_locking=*/false);
  out << file.string() << "  (" << fs::file_size(file, ec) << " bytes)\n";
  print_attrs(f, "/", out, "  ");
  int bad = describe_group(f, "/", out, 1);
  out << (bad ? std::to_string(bad) + " corrupt dataset(s)" : std::string("every dataset read cleanly")) << "\n";
  return bad;
}

}  // namespace moe
