// Per-kernel GPU time, for finding where a device step's time goes without a profiler on the
// machine (the lent GPU machines' nsys cannot write reports). Off unless MOE_KERNEL_PROFILE=1 (or
// set_kernel_profile(true)): then every MOE_LAUNCH, cuBLAS GEMM and host <-> device copy records a
// CUDA event pair on its stream (no synchronization added: the timeline is the unprofiled one),
// and the pairs are resolved in batches. Under the emulation the host clock times each
// (synchronous) launch instead.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/cuda/runtime.h"

namespace moe::cuda {

bool kernel_profile_enabled();
void set_kernel_profile(bool on);

// Times what runs on `stream` between its construction and its destruction under `name` (a string
// literal: the kernel's spelled name, "cublasGemmEx", ...). Nothing when profiling is off.
class KernelTimer {
 public:
  KernelTimer(const char* name, cudaStream_t stream);
  ~KernelTimer();
  KernelTimer(const KernelTimer&) = delete;
  KernelTimer& operator=(const KernelTimer&) = delete;

 private:
  const char* name_ = nullptr;
  cudaStream_t stream_ = nullptr;
  void* start_ = nullptr;  // a cudaEvent_t from the pool (GPU) or unused (emulation)
  double host_start_ = 0;
};

struct KernelTotal {
  std::string name;
  int64_t calls = 0;
  double ms = 0;  // summed GPU time
};

// Totals since the last reset, largest first (waits for the recorded work to finish).
std::vector<KernelTotal> kernel_profile_totals();
void kernel_profile_reset();
// A plain-text table of the `top` largest totals and the rest summed: kernel, calls, total ms,
// mean us per call, share of the profiled time. Empty when nothing was recorded.
std::string kernel_profile_table(size_t top = 30);

}  // namespace moe::cuda
