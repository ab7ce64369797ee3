// main() of build/tests/moetrain_mpi_tests (run by ctest as `mpirun -np 2`): MPI start-up,
// GoogleTest on every rank, and one exit code agreed by all ranks (any failure fails the job).
#include <gtest/gtest.h>
// C API only: the deprecated C++ bindings need libmpi_cxx, which nothing links.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "parallel/communicator.h"
#include "tests/cuda/run_seed.h"

namespace {

class FailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit FailurePrinter(int rank) : rank_(rank) {}
  // The test's name is kept here: UnitTest::current_test_info() would deadlock inside
  // OnTestPartResult (gtest holds its lock there).
  void OnTestStart(const ::testing::TestInfo& t) override {
    test_ = std::string(t.test_suite_name()) + "." + t.name();
  }
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (!r.failed()) return;
    std::fprintf(stderr, "rank %d: %s: %s:%d: failure\n%s\n", rank_, test_.c_str(), r.file_name() ? r.file_name() : "?",
                 r.line_number(), r.message());
  }

 private:
  int rank_;
  std::string test_;
};

}  // namespace

int main(int argc, char** argv) {
  moe::mpi_init(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank != 0) {
    // Other ranks report only their failures, each line naming the rank, to keep the log short.
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new FailurePrinter(rank));
  }
  // One input seed for the whole job (tests/cuda/run_seed.h): without MOE_TEST_SEED every rank
  // would draw its own, and a failure could not be rerun with one number.
  if (!moe::test::run_seed_set()) {
    unsigned long long seed = rank == 0 ? moe::test::draw_run_seed() : 0;
    MPI_Bcast(&seed, 1, MPI_UNSIGNED_LONG_LONG, 0, MPI_COMM_WORLD);
    setenv("MOE_TEST_SEED", std::to_string(seed).c_str(), 1);
  }
  int rc = RUN_ALL_TESTS();
  int any = 0;
  MPI_Allreduce(&rc, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (any != 0 && rc == 0 && rank == 0) std::fprintf(stderr, "moetrain_mpi_tests: a test failed on another rank\n");
  moe::mpi_finalize();
  return any;
}
