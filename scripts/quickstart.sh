#!/usr/bin/env bash
# The README's quickstart: installs what is missing, builds, prepares the Brown corpus once
# (data/brown), and trains recipes/quickstart.toml on the CPU into runs/quickstart.
# Extra arguments go to `moetrain train` (e.g. --set train.steps=50).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)" --target moetrain
[ -f data/brown/DONE ] || build/moetrain prepare brown --out data/brown
build/moetrain train recipes/quickstart.toml "$@"
