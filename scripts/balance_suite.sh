#!/usr/bin/env bash
# The balancing experiments end to end: trains every recipes/balance/*.toml (except base*.toml)
# into runs/balance/<name>/, then `moetrain compare` (runs/balance/compare.{md,csv}) and the figures.
#
# usage: scripts/balance_suite.sh [--steps N] [--set K=V]... [--figures DIR] [--jobs N] [NAME...]
#   NAME      recipe names (file names in recipes/balance/ without .toml); default: all of them
#   --steps N train.steps override for a quick run (the recipes' own value otherwise); below 40
#             steps schedule.warmup_steps also becomes N/4 (the base's 20 must stay below N)
#   --set K=V passed to every `moetrain train` (e.g. --set eval.every=10)
#   --figures DIR  where tools/plot_routing.py writes its PNG files (default docs/figures)
#   --jobs N  build parallelism (default 2)
# Each run starts from an empty runs/balance/<name>/ (an earlier run of that name is removed).
# The console of each run goes to runs/balance/<name>.log; measured wall-clock seconds of each
# `moetrain train` (startup, evals and the final checkpoint included) to runs/balance/wall_times.tsv.
set -euo pipefail
cd "$(dirname "$0")/.."

steps=""
figures="docs/figures"
jobs=2
names=()
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --steps) steps="${2:?--steps needs a number}"; shift 2 ;;
    --set) extra+=(--set "${2:?--set needs section.key=value}"); shift 2 ;;
    --figures) figures="${2:?--figures needs a directory}"; shift 2 ;;
    --jobs) jobs="${2:?--jobs needs a number}"; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --*) echo "balance_suite: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) names+=("$1"); shift ;;
  esac
done

if [ ${#names[@]} -eq 0 ]; then
  for f in recipes/balance/*.toml; do
    n="$(basename "$f" .toml)"
    case "$n" in base*) continue ;; esac
    names+=("$n")
  done
fi
for n in "${names[@]}"; do
  case "$n" in base*) echo "balance_suite: $n is a shared base, not a strategy recipe" >&2; exit 2 ;; esac
  [ -f "recipes/balance/$n.toml" ] || { echo "balance_suite: recipes/balance/$n.toml not found" >&2; exit 2; }
done
[ -x /usr/bin/python3 ] || { echo "balance_suite: /usr/bin/python3 missing (scripts/setup.sh installs it)" >&2; exit 1; }

cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$jobs" --target moetrain
[ -f data/brown/DONE ] || build/moetrain prepare brown --out data/brown

mkdir -p runs/balance
sets=()
if [ -n "$steps" ]; then
  sets=(--set "train.steps=$steps")
  if [ "$steps" -lt 40 ]; then
    sets+=(--set "schedule.warmup_steps=$((steps / 4))")
    echo "balance_suite: --steps $steps: also schedule.warmup_steps=$((steps / 4))"
  fi
fi
sets+=("${extra[@]}")
printf 'run\twall_s\n' > runs/balance/wall_times.tsv
dirs=()
for n in "${names[@]}"; do
  dir="runs/balance/$n"
  rm -rf "$dir"
  echo "=== $n -> $dir"
  t0=$(date +%s.%N)
  build/moetrain train "recipes/balance/$n.toml" --run-dir "$dir" "${sets[@]}" 2>&1 | tee "runs/balance/$n.log"
  t1=$(date +%s.%N)
  awk -v n="$n" -v a="$t0" -v b="$t1" 'BEGIN { printf "%s\t%.1f\n", n, b - a }' >> runs/balance/wall_times.tsv
  dirs+=("$dir")
done

echo "=== compare"
build/moetrain compare "${dirs[@]}" --markdown --csv runs/balance/compare.csv | tee runs/balance/compare.md
echo "=== wall clock (measured around each train command)"
column -t runs/balance/wall_times.tsv 2>/dev/null || cat runs/balance/wall_times.tsv
echo "=== figures -> $figures"
/usr/bin/python3 tools/plot_routing.py --out "$figures" "${dirs[@]}"
