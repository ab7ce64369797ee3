#!/usr/bin/env bash
# The README's quickstart: installs what is missing, builds, prepares the Brown corpus once
# (data/brown), and trains recipes/quickstart.toml on the CPU into runs/quickstart.
# Extra arguments go to `moetrain train` (e.g. --set train.steps=50).
set -euo pipefail
cd "$(dirname "$0")/.."
# OpenMP threads that spin while waiting steal the cores OpenBLAS's threads need on small
# machines (measured: 5-10x slower steps on 2 busy cores); let them sleep instead.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"

bash scripts/setup.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)" --target moetrain
[ -f data/brown/DONE ] || build/moetrain prepare brown --out data/brown
build/moetrain train recipes/quickstart.toml "$@"
