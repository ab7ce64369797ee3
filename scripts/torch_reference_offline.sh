#!/usr/bin/env bash
# The PyTorch reference for case files written where torch is missing (the lent GPU machine):
# tests/cuda/torch_reference_device_test.cpp, with MOE_TORCH_REFERENCE_OUT=DIR and no torch,
# writes DIR/<case>.h5 (the model on the device: weights, batch, logits, losses, grads, routings,
# AdamW steps, and the tolerance the test asserts); scripts/gpu_pack_run.sh sets it to
# $OUT/torch_reference. This runs tests/torch_reference.py on every DIR/*.h5 here, each held to
# the tolerance in its file, and prints one line per case; the full per-tensor tables go to
# DIR/<case>.log (or $LOG_DIR/<case>.log).
#   scripts/torch_reference_offline.sh DIR
# Exit 0: every case within its tolerance; 1: a case failed (mismatch or unreadable file);
# 2: no case files, or torch / h5py missing here.
set -uo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
dir="${1:?usage: scripts/torch_reference_offline.sh DIR (the case files, *.h5)}"
python="${MOE_TORCH_REFERENCE_PYTHON:-/usr/bin/python3}"
logs="${LOG_DIR:-$dir}"
shopt -s nullglob
cases=("$dir"/*.h5)
[[ ${#cases[@]} -gt 0 ]] || { echo "torch_reference_offline: no *.h5 case files in $dir"; exit 2; }
"$python" -c 'import torch, h5py' 2>/dev/null ||
  { echo "torch_reference_offline: $python cannot import torch and h5py (scripts/setup.sh installs them)"; exit 2; }
mkdir -p "$logs"
failed=0
for f in "${cases[@]}"; do
  name=$(basename "$f" .h5)
  log="$logs/$name.log"
  "$python" "$src/tests/torch_reference.py" "$f" > "$log" 2>&1
  rc=$?
  # "torch_reference: worst rel err <e> (<what>), tolerance <t>" (the script's summary line)
  summary=$(sed -n 's/^torch_reference: worst rel err \(.*\), tolerance \(.*\)$/\1|\2/p' "$log" | tail -1)
  err="${summary%%|*}" tol="${summary##*|}"
  if [[ $rc == 0 && -n "$summary" ]]; then
    verdict=ok
  else
    verdict=FAIL
    failed=1
  fi
  [[ -n "$summary" ]] || { err="(no result: $(tail -1 "$log"))"; tol="-"; }
  printf '%-28s max rel err %-40s tolerance %-8s %s\n' "$name" "$err" "$tol" "$verdict"
done
[[ $failed == 0 ]] && echo "torch_reference_offline: ${#cases[@]} cases match" ||
  echo "torch_reference_offline: FAILED (per-tensor tables in $logs/*.log)"
exit $failed
