#!/usr/bin/env bash
# Runs the emulated kernel tests over several fresh input seeds (tests/cuda/test_seed.h) and
# lists the seeds and tests that failed: what to run after changing a kernel or a tolerance, since
# one CI run sees one seed. Needs a build (bash scripts/test.sh, or cmake --build build).
# Usage: scripts/seed_sweep.sh [runs (default 5)] [gtest filter (default: every test that draws
#        seeded inputs, i.e. all but the training and PyTorch-reference runs)]
# Each run of the default filter takes ~2.5 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-5}"
filter="${2:--TrainDevice*:Runs/TrainDeviceCase*:TorchReferenceDevice*}"
bin=build/tests/moetrain_cuda_emu_tests
[ -x "$bin" ] || { echo "seed_sweep: $bin not built; run bash scripts/test.sh (or cmake --build build) first" >&2; exit 2; }
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || { echo "seed_sweep: runs must be a positive integer, got '$runs'" >&2; exit 2; }
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"
log_dir=build/seed_sweep
mkdir -p "$log_dir"
failed_runs=0
for ((i = 1; i <= runs; ++i)); do
  seed=$(( $(od -An -N4 -tu4 /dev/urandom) + 1 ))
  log="$log_dir/seed_$seed.log"
  start=$SECONDS
  if MOE_TEST_SEED=$seed "$bin" --gtest_brief=1 --gtest_filter="$filter" > "$log" 2>&1; then
    echo "run $i/$runs: MOE_TEST_SEED=$seed passed ($((SECONDS - start)) s)"
  else
    failed_runs=$((failed_runs + 1))
    echo "run $i/$runs: MOE_TEST_SEED=$seed FAILED ($((SECONDS - start)) s; log $log):"
    grep -a '^\[  FAILED  \] [A-Z]' "$log" | sed 's/^/  /' || echo "  (no test failed: the binary itself did; see the log)"
  fi
done
echo "seed_sweep: $failed_runs of $runs runs failed"
[ "$failed_runs" -eq 0 ]
