#!/usr/bin/env bash
# The offline PyTorch reference, end to end under the emulation (ctest torch_reference_offline):
# the device test with torch hidden (MOE_TORCH_REFERENCE_PYTHON=/nonexistent) and
# MOE_TORCH_REFERENCE_OUT set must skip and write its case file, as on a GPU machine without
# torch; scripts/torch_reference_offline.sh must pass that file, fail (exit 1) on a copy with one
# logit perturbed, and refuse (exit 2) a directory without case files. One case (dense, fp32
# activations, tolerance 1e-4: the tightest) keeps it to about a minute. Exit 77 (skipped) where
# /usr/bin/python3 has no torch to check with.
#   tests/torch_reference_offline_test.sh <moetrain_cuda_emu_tests> <work dir>
set -u
bin="$1"
work="$2"
src="$(cd "$(dirname "$0")/.." && pwd)"
py=/usr/bin/python3
"$py" -c 'import torch, h5py' 2>/dev/null || { echo "no torch here: skipped"; exit 77; }
fail() { echo "FAIL: $1"; exit 1; }
rm -rf "$work" && mkdir -p "$work"

out=$(MOE_TORCH_REFERENCE_OUT="$work/cases" MOE_TORCH_REFERENCE_PYTHON=/nonexistent \
      "$bin" --gtest_filter='TorchReferenceDevice.DenseFp32ActivationsMatchTo1e4' 2>&1)
rc=$?
echo "$out" | grep -E 'SKIPPED|wrote|FAILED' | head -5
[[ $rc == 0 ]] || { echo "$out" | tail -20; fail "the device test exited $rc"; }
grep -q 'cannot import torch: wrote .*device_dense_fp32.h5' <<<"$out" || fail "the test did not skip naming its file"
[[ -s "$work/cases/device_dense_fp32.h5" ]] || fail "no case file $work/cases/device_dense_fp32.h5"

echo "== the case as written"
bash "$src/scripts/torch_reference_offline.sh" "$work/cases"
rc=$?
[[ $rc == 0 ]] || fail "torch_reference_offline.sh exited $rc on the written case"

echo "== a copy with one logit perturbed by 1% of the largest"
mkdir -p "$work/bad" && cp "$work/cases/device_dense_fp32.h5" "$work/bad/"
"$py" - "$work/bad/device_dense_fp32.h5" <<'PY' || fail "cannot perturb the copy"
import sys, h5py, numpy as np
with h5py.File(sys.argv[1], "r+") as f:
    d = f["logits"]
    v = d[()]
    v[1, 2, 3] += 0.01 * np.abs(v).max()
    d[...] = v
PY
bash "$src/scripts/torch_reference_offline.sh" "$work/bad" > "$work/bad.out"
rc=$?
cat "$work/bad.out"
[[ $rc == 1 ]] || fail "torch_reference_offline.sh exited $rc on the perturbed copy, expected 1"
grep -q '^device_dense_fp32 .*FAIL$' "$work/bad.out" || fail "no FAIL line for the perturbed case"
grep -q 'BAD logits' "$work/bad/device_dense_fp32.log" || fail "the perturbed logits were not the mismatch named"

echo "== a directory without case files"
mkdir -p "$work/empty"
bash "$src/scripts/torch_reference_offline.sh" "$work/empty"
rc=$?
[[ $rc == 2 ]] || fail "torch_reference_offline.sh exited $rc on an empty directory, expected 2"
echo "PASS"
