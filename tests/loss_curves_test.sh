#!/usr/bin/env bash
# scripts/loss_curves.py on made-up runs: a reference curve; the same with rounding noise and with
# one spike (both pass); a change from step 1 (fails the early check); a drift from step 40 (fails
# the smoothed one); a missing file and a shorter run (exit 2, one line naming the problem).
set -uo pipefail
script="$(cd "$(dirname "$0")/.." && pwd)/scripts/loss_curves.py"
dir="$1"
rm -rf "$dir" && mkdir -p "$dir"
python3 - "$dir" <<'PY'
import json, math, os, sys
d = sys.argv[1]
def write(name, f, steps=100):
    os.makedirs(f"{d}/{name}", exist_ok=True)
    with open(f"{d}/{name}/metrics.jsonl", "w") as out:
        out.write(json.dumps({"kind": "eval", "step": 0, "val_loss": 9.0}) + "\n")  # not a train row
        for s in range(1, steps + 1):
            out.write(json.dumps({"kind": "train", "step": s, "loss": f(s), "tokens_per_s": 1000.0}) + "\n")
ref = lambda s: 2.0 + 3.0 * math.exp(-s / 15.0)
write("ref", ref)
write("noise", lambda s: ref(s) + 1e-4 * math.sin(7 * s))
write("spike", lambda s: ref(s) + (0.3 if s == 16 else 0.0))
write("early", lambda s: ref(s) + 0.01)
write("drift", lambda s: ref(s) + (0.08 if s >= 40 else 0.0))
write("short", ref, steps=50)
PY
fails=0
expect() {  # expect RC RUN [grep pattern]
  local want=$1 run=$2 pattern=${3:-}
  out=$(python3 "$script" "$dir/ref" "$dir/$run" 2>&1); rc=$?
  if [[ $rc != "$want" ]]; then echo "FAIL: $run: exit $rc, expected $want"; echo "$out"; fails=1; return; fi
  if [[ -n $pattern ]] && ! grep -q -- "$pattern" <<<"$out"; then echo "FAIL: $run: no '$pattern' in"; echo "$out"; fails=1; return; fi
  echo "ok: $run (exit $rc)"
}
expect 0 noise "early: .* ok"
expect 0 spike "largest per-step |difference| 0.3000 at step 16"
expect 1 early "early: .* FAIL"
expect 1 drift "smoothed: .* FAIL"
expect 2 missing "missing/metrics.jsonl"
expect 2 short "the runs log different steps"
exit $fails
