// Per-kernel GPU time (kernel_profile.h). Event pairs wait in `pending` until a batch is full or
// the totals are asked for; then each pair's stop event is awaited, its elapsed time added to its
// name's total, and the events return to the pool.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>

#include "core/cuda/kernel_profile.h"
#include "core/error.h"

namespace moe::cuda {
namespace {

struct Pending {
  const char* name;
  void* start;
  void* stop;
};

struct Profile {
  std::mutex mu;
  bool on = [] {
    const char* v = std::getenv("MOE_KERNEL_PROFILE");
    return v != nullptr && v[0] == '1';
  }();
  std::map<std::string, KernelTotal> totals;
  std::vector<Pending> pending;
  std::vector<void*> pool;  // free events (GPU)
};

Profile& profile() {
  static Profile* p = new Profile;  // never destroyed: timers may run during static destruction
  return *p;
}

constexpr size_t kBatch = 4096;  // event pairs resolved at once

#ifdef MOE_CUDA_EMULATION
double host_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
#endif

void add(Profile& p, const char* name, double ms) {
  KernelTotal& t = p.totals[name];
  if (t.name.empty()) t.name = name;
  t.calls += 1;
  t.ms += ms;
}

#ifndef MOE_CUDA_EMULATION
void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) MOE_FAIL("kernel profile", what, ": ", cudaGetErrorString(err));
}

void* take_event(Profile& p) {
  if (!p.pool.empty()) {
    void* e = p.pool.back();
    p.pool.pop_back();
    return e;
  }
  cudaEvent_t e;
  check(cudaEventCreate(&e), "cudaEventCreate");
  return e;
}

// Caller holds p.mu.
void resolve(Profile& p) {
  for (const Pending& q : p.pending) {
    float ms = 0;
    // Pairs on different streams finish in any order: wait for each stop (done at once mostly).
    check(cudaEventSynchronize(static_cast<cudaEvent_t>(q.stop)), "cudaEventSynchronize");
    check(cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(q.start), static_cast<cudaEvent_t>(q.stop)),
          "cudaEventElapsedTime");
    add(p, q.name, double(ms));
    p.pool.push_back(q.start);
    p.pool.push_back(q.stop);
  }
  p.pending.clear();
}
#endif

}  // namespace

bool kernel_profile_enabled() { return profile().on; }

void set_kernel_profile(bool on) {
  Profile& p = profile();
  std::lock_guard<std::mutex> lock(p.mu);
  p.on = on;
}

KernelTimer::KernelTimer(const char* name, cudaStream_t stream) {
  Profile& p = profile();
  if (!p.on) return;
  name_ = name;
  stream_ = stream;
#ifdef MOE_CUDA_EMULATION
  host_start_ = host_ms();
#else
  std::lock_guard<std::mutex> lock(p.mu);
  start_ = take_event(p);
  check(cudaEventRecord(static_cast<cudaEvent_t>(start_), stream), "cudaEventRecord");
#endif
}

KernelTimer::~KernelTimer() {
  if (name_ == nullptr) return;
  Profile& p = profile();
  std::lock_guard<std::mutex> lock(p.mu);
#ifdef MOE_CUDA_EMULATION
  add(p, name_, host_ms() - host_start_);
#else
  void* stop = take_event(p);
  if (cudaEventRecord(static_cast<cudaEvent_t>(stop), stream_) != cudaSuccess) return;  // no throw here
  p.pending.push_back({name_, start_, stop});
  if (p.pending.size() >= kBatch) {
    try {
      resolve(p);
    } catch (...) {
      p.pending.clear();  // a destructor must not throw; the next totals() reports nothing lost silently
    }
  }
#endif
}

std::vector<KernelTotal> kernel_profile_totals() {
  Profile& p = profile();
  std::lock_guard<std::mutex> lock(p.mu);
#ifndef MOE_CUDA_EMULATION
  resolve(p);
#endif
  std::vector<KernelTotal> out;
  for (const auto& [name, t] : p.totals) out.push_back(t);
  std::sort(out.begin(), out.end(), [](const KernelTotal& a, const KernelTotal& b) { return a.ms > b.ms; });
  return out;
}

void kernel_profile_reset() {
  Profile& p = profile();
  std::lock_guard<std::mutex> lock(p.mu);
#ifndef MOE_CUDA_EMULATION
  resolve(p);
#endif
  p.totals.clear();
}

std::string kernel_profile_table(size_t top) {
  const std::vector<KernelTotal> all = kernel_profile_totals();
  if (all.empty()) return "";
  double sum = 0;
  for (const KernelTotal& t : all) sum += t.ms;
  std::string out;
  char line[256];
  const auto row = [&](const KernelTotal& t) {
    std::snprintf(line, sizeof line, "%-48.48s %9lld %11.3f %10.2f %6.1f%%\n", t.name.c_str(), (long long)t.calls, t.ms,
                  1e3 * t.ms / double(t.calls), 100.0 * t.ms / sum);
    out += line;
  };
  std::snprintf(line, sizeof line, "%-48s %9s %11s %10s %7s\n", "kernel", "calls", "total ms", "mean us", "share");
  out += line;
  KernelTotal rest;
  for (size_t i = 0; i < all.size(); ++i) {
    if (i < top) {
      row(all[i]);
    } else {
      rest.calls += all[i].calls, rest.ms += all[i].ms;
    }
  }
  if (rest.calls > 0) {
    std::snprintf(line, sizeof line, "(%zu more)", all.size() - top);
    rest.name = line;
    row(rest);
  }
  std::snprintf(line, sizeof line, "%-48s %9s %11.3f\n", "all profiled", "", sum);
  out += line;
  return out;
}

}  // namespace moe::cuda
