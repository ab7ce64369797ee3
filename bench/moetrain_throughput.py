# Times the real trainer (build/moetrain train) on a recipe for the throughput benchmark: per-step
# tokens/s from metrics.jsonl and process CPU seconds per step sampled from /proc. Run by /usr/bin/python3.
"""Runs `moetrain train RECIPE` for warmup + steps steps with log.every = 1 and no eval or checkpoint
inside the timed steps, and prints one JSON line: the median of the trainer's own per-step tokens_per_s
over the steps after warmup, and the CPU seconds (user + system, all threads) the trainer spent per
timed step, read from /proc/PID/stat each time a new metrics row appears (CPU time is what other
load on a shared machine disturbs least)."""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14, 15)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe")
    ap.add_argument("--moetrain", default="build/moetrain")
    ap.add_argument("--data", default=None, help="data.dir override (a prepared corpus)")
    ap.add_argument("--steps", type=int, default=30, help="timed steps")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--set", action="append", default=[], help="extra --set section.key=value")
    a = ap.parse_args()
    run_dir = tempfile.mkdtemp(prefix="moetrain_tp_")
    total = a.warmup + a.steps
    cmd = [a.moetrain, "train", a.recipe, "--run-dir", run_dir, "--set", f"train.steps={total}",
           "--set", "schedule.warmup_steps=0", "--set", "log.every=1", "--set", "eval.every=0",
           "--set", "eval.batches=1", "--set", "checkpoint.every=0"]
    if a.data:
        cmd += ["--set", f"data.dir={a.data}"]
    for s in a.set:
        cmd += ["--set", s]
    metrics = os.path.join(run_dir, "metrics.jsonl")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    cpu_at = {}  # train step -> trainer CPU seconds when its metrics row was seen
    seen = 0
    try:
        while proc.poll() is None:
            time.sleep(0.005)
            try:
                with open(metrics) as f:
                    lines = f.readlines()
            except FileNotFoundError:
                continue
            if len(lines) > seen:
                try:
                    c = cpu_seconds(proc.pid)
                except (FileNotFoundError, ProcessLookupError):
                    break
                for line in lines[seen:]:
                    if line.endswith("\n"):
                        row = json.loads(line)
                        if row.get("kind") == "train":
                            cpu_at[row["step"]] = c
                        seen += 1
        out = proc.communicate()[0]
        if proc.returncode != 0:
            sys.exit(f"moetrain_throughput.py: `{' '.join(cmd)}` failed ({proc.returncode}):\n{out}")
        rows = [json.loads(l) for l in open(metrics)]
        tps = [r["tokens_per_s"] for r in rows if r.get("kind") == "train" and r["step"] > a.warmup]
        header = out.splitlines()[0] if out else ""
        cpu = None
        if a.warmup in cpu_at and total in cpu_at:
            cpu = (cpu_at[total] - cpu_at[a.warmup]) / a.steps
        print(json.dumps({"impl": "moetrain", "recipe": a.recipe, "command": " ".join(cmd), "header": header,
                          "steps": len(tps), "tokens_per_s": statistics.median(tps),
                          "cpu_s_per_step": cpu, "step_tokens_per_s": [round(t) for t in tps]}))
    finally:
        if proc.poll() is None:
            proc.kill()
        shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
