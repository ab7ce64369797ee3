// Thread control for kernels that run many independent GEMMs under OpenMP: each GEMM must then
// stay on its calling thread instead of fanning out to OpenBLAS's own pool.
#pragma once
#include <cblas.h>
#include <omp.h>

namespace moe {

// When independent GEMMs run in parallel, each must stay on its calling thread: OpenBLAS
// (pthreads build) would otherwise fan every call out to its own pool and oversubscribe the
// cores. The setting is process-wide, so it is restored on scope exit; the trainer calls ops
// from one thread.
class SingleThreadedBlas {
 public:
  explicit SingleThreadedBlas(bool active) : active_(active), prev_(active ? openblas_get_num_threads() : 1) {
    if (active_ && prev_ != 1) openblas_set_num_threads(1);
  }
  ~SingleThreadedBlas() {
    if (active_ && prev_ != 1) openblas_set_num_threads(prev_);
  }
  SingleThreadedBlas(const SingleThreadedBlas&) = delete;
  SingleThreadedBlas& operator=(const SingleThreadedBlas&) = delete;

 private:
  bool active_;
  int prev_;
};

// True when `tasks` independent pieces of `work` multiply-adds in total are worth an OpenMP team
// (more than one thread, not nested, enough tasks to feed every thread, enough work to pay for
// waking it); otherwise the caller runs them in sequence and lets BLAS thread each GEMM.
inline bool tasks_in_parallel(long tasks, double work, double min_work = double(1 << 20)) {
  int threads = omp_get_max_threads();
  return threads > 1 && !omp_in_parallel() && tasks >= threads && work >= min_work;
}

}  // namespace moe
