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
cd build
ctest --output-on-failure -j "$jobs" "$@"
