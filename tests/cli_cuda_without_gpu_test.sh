#!/usr/bin/env bash
# `moetrain train ... --set train.device=cuda` on a machine without a usable GPU: one line naming
# train.device and the reason, a non-zero exit, and no run directory left behind. Exit 77
# (skipped) where a GPU is usable, or where moetrain was built without the CUDA backend (then the
# refusal is the Trainer.BadInputGivesOneClearError case).
set -u
build="$1"
run_dir="$2"
moetrain="$build/moetrain"
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then exit 77; fi
rm -rf "$run_dir"
out=$("$moetrain" train "$(dirname "$0")/../recipes/quickstart.toml" --set train.device=cuda --run-dir "$run_dir" 2>&1)
rc=$?
if grep -q "built without the CUDA backend" <<<"$out"; then exit 77; fi
fail() { echo "FAIL: $1"; echo "--- output ---"; echo "$out"; exit 1; }
[[ $rc != 0 ]] || fail "exit code 0"
[[ $(wc -l <<<"$out") == 1 ]] || fail "expected one line"
grep -q '^moetrain train: error: train.device = "cuda": no CUDA device: .*; set train.device = "cpu"' <<<"$out" ||
  fail "the line does not name train.device and the reason"
[[ ! -e "$run_dir" ]] || fail "a run directory was created"
echo "ok: $out"
