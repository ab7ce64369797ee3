// Device detection for the real CUDA build: whether a usable GPU is there, and if not, one line
// saying why (no driver, no device), so a CUDA run on a machine without a GPU fails clearly.
#pragma once
#include <string>

namespace moe::cuda {

struct DeviceInfo {
  int index = 0;
  std::string name;
  int major = 0, minor = 0;  // compute capability
  int multiprocessors = 0;
  size_t global_bytes = 0;
  size_t shared_bytes_per_block_optin = 0;
};

// Empty when a device can be used, else the reason ("CUDA driver version is insufficient ...").
std::string device_unavailable_reason();
// Throws moe::Error("no CUDA device: <reason>") when there is none; else selects and describes it.
// index < 0: node_local_rank(0) (parallel/communicator.h) modulo the device count, the device
// make_nccl_communicator picks too.
DeviceInfo require_device(int index = -1);

}  // namespace moe::cuda
