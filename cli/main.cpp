// build/moetrain: the command-line entry point. Each subcommand lives in its own cli/cmd_*.cpp.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <unistd.h>

#include "cli/commands.h"
#include "core/allocator.h"
#include "core/error.h"
#include "parallel/communicator.h"
#ifdef MOE_WITH_CUDA
#include "core/cuda/ops/cuda_backend.h"
#endif
#ifdef MOE_WITH_NCCL
#include "parallel/nccl_communicator.h"
#endif

namespace {

void usage(FILE* out) {
  std::fprintf(out,
               "usage: moetrain <command> [args]\n\n"
               "commands:\n"
               "  train RECIPE.toml [--set section.key=value]... [--run-dir DIR] [--resume latest|PATH]\n"
               "  prepare brown --out DIR | prepare text FILE... --out DIR\n"
               "  inspect PATH              a checkpoint or a routing.h5, human-readable\n"
               "  compare RUN_DIR... [--markdown] [--csv FILE]   one table row per run (balance metrics)\n"
               "  recipe-keys [--markdown]  every recipe key with its type, default and meaning\n\n"
               "Run `moetrain <command> --help` for the options of a command.\n");
}

// "moetrain train" or, under mpirun with several ranks, "moetrain train (rank 1 of 2)".
std::string who(const std::string& cmd) {
  if (!moe::mpi_active()) return "moetrain " + cmd;
  auto w = moe::world_communicator();
  if (w->size() == 1) return "moetrain " + cmd;
  return "moetrain " + cmd + " (rank " + std::to_string(w->rank()) + " of " + std::to_string(w->size()) + ")";
}

// An error on one rank ends the whole job (MPI_Abort) so no peer waits in a collective.
int fail(const std::string& cmd, const char* what) {
  std::fprintf(stderr, "%s: error: %s\n", who(cmd).c_str(), what);
  std::fflush(stderr);
  moe::mpi_abort_job(1);
  moe::mpi_finalize();
  return 1;
}

}  // namespace

// libgomp reads OMP_WAIT_POLICY when it is loaded, before main. Its default (threads spin
// while waiting) steals the cores OpenBLAS's threads need: training ran 2-2.8x slower on 2 cores
// (docs/benchmarks.md). So when the user did not choose, restart once with "passive".
static void ensure_passive_omp_wait(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY")) return;
  setenv("OMP_WAIT_POLICY", "passive", 1);
  execv("/proc/self/exe", argv);  // returns only on failure: then go on with the default policy
}

int main(int argc, char** argv) {
  ensure_passive_omp_wait(argv);
  moe::tune_host_malloc();  // before the first allocation of a training step (core/allocator.h)
#ifdef MOE_WITH_CUDA
  moe::cuda::register_backend();  // used only by a run with train.device = "cuda"
#endif
#ifdef MOE_WITH_NCCL
  // Data parallelism with train.device = "cuda": the grads' all-reduce runs on the GPUs.
  moe::register_device_communicator_factory(
      [](std::shared_ptr<moe::Communicator> host) -> std::shared_ptr<moe::Communicator> {
        return moe::make_nccl_communicator(std::move(host));
      });
#endif
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  std::string cmd = argv[1];
  std::vector<std::string> args(argv + 2, argv + argc);
  try {
    // `train` runs under mpirun for data parallelism; without a launcher it is a world of one
    // without MPI (parallel/communicator.h).
    if (cmd == "train" && moe::launched_by_mpi_launcher()) moe::mpi_init(&argc, &argv);
    for (const auto& c : moe::cli::commands())
      if (c.name == cmd) {
        int rc = c.run(args);
        moe::mpi_finalize();
        return rc;
      }
    std::fprintf(stderr, "moetrain: unknown command '%s'\n", cmd.c_str());
    usage(stderr);
    return 2;
  } catch (const moe::Error& e) {
    return fail(cmd, e.what());
  } catch (const std::exception& e) {
    return fail(cmd, e.what());
  }
}
