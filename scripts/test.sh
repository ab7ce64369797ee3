#!/usr/bin/env bash
# The README's test command: installs what is missing, builds into build/, runs every test.
# Usage: bash scripts/test.sh [ctest args...]   (e.g. -R Moe, -L mpi)
set -euo pipefail
cd "$(dirname "$0")/.."
# OpenMP threads that spin while waiting steal the cores OpenBLAS's threads need on small
# machines (measured: 5-10x slower steps on 2 busy cores); let them sleep instead.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"

bash scripts/setup.sh
jobs=$(nproc)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j "$jobs"
# OpenMPI refuses root without these; tests that start mpirun inherit them.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1
# The kernel tests draw fresh random inputs each run (tests/cuda/test_seed.h): one seed for the
# whole run, printed here and by any failing test; MOE_TEST_SEED=<n> draws the same inputs again.
if [ -z "${MOE_TEST_SEED:-}" ]; then
  MOE_TEST_SEED=$(( $(od -An -N4 -tu4 /dev/urandom) + 1 ))
fi
export MOE_TEST_SEED
echo "kernel tests' inputs: MOE_TEST_SEED=$MOE_TEST_SEED (set it to rerun with the same inputs; 0: the fixed ones)"
cd build
ctest --output-on-failure -j "$jobs" "$@"
