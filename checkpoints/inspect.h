// Human-readable listing of a moetrain HDF5 file (checkpoint or routing.h5) for `moetrain
// inspect`: every group, dataset (type, shape, checksum, value summary) and attribute.
#pragma once
#include <filesystem>
#include <ostream>

namespace moe {

// `path` is an .h5 file or a checkpoint step directory (its ckpt.h5 is listed). Every dataset
// is read in full, so each Fletcher32 checksum is verified; a dataset that fails is listed as
// CORRUPT with the reason and the listing goes on. Returns the number of corrupt datasets.
// Throws moe::Error when the file cannot be opened at all.
int describe_h5(const std::filesystem::path& path, std::ostream& out);

}  // namespace moe
