#!/bin/bash
# A rank killed mid-training ends the whole `mpirun -np 2 moetrain train` job within 30 s, and
# mpirun's message names the rank (run by ctest as mpi_kill_rank; args: build dir, work dir).
set -u
BUILD=$1
WORK=$2
rm -rf "$WORK" && mkdir -p "$WORK"
for i in $(seq 1 400); do echo "the router sends each token to a few experts and balance keeps loads even $i."; done > "$WORK/corpus.txt"
"$BUILD/moetrain" prepare text "$WORK/corpus.txt" --out "$WORK/data" > /dev/null || { echo "prepare failed"; exit 1; }
cat > "$WORK/r.toml" <<TOML
[model]
vocab_size = 256
d_model = 32
n_layers = 2
n_heads = 2
[moe]
enabled = true
num_experts = 4
expert_hidden = 32
[data]
dir = "$WORK/data"
[train]
steps = 100000
batch_size = 4
seq_len = 16
[eval]
every = 0
[checkpoint]
every = 0
TOML
mpirun --oversubscribe -np 2 "$BUILD/moetrain" train "$WORK/r.toml" --run-dir "$WORK/run" > "$WORK/log" 2>&1 &
MPIRUN=$!
# wait until training runs, then kill -9 the rank whose environment says rank 1
for i in $(seq 1 120); do grep -q "^step" "$WORK/log" 2>/dev/null && break; sleep 0.5; done
VICTIM=""
for p in $(pgrep -P $MPIRUN); do
  if tr '\0' '\n' < /proc/$p/environ 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=1"; then VICTIM=$p; fi
done
[ -n "$VICTIM" ] || { echo "could not find rank 1 among the children of mpirun $MPIRUN"; kill $MPIRUN; exit 1; }
START=$(date +%s)
kill -9 "$VICTIM"
for i in $(seq 1 60); do kill -0 $MPIRUN 2>/dev/null || break; sleep 0.5; done
if kill -0 $MPIRUN 2>/dev/null; then echo "the job still runs 30 s after rank 1 was killed"; kill $MPIRUN; exit 1; fi
wait $MPIRUN
RC=$?
echo "job ended $(( $(date +%s) - START )) s after rank 1 was killed, mpirun exit code $RC"
[ $RC -ne 0 ] || { echo "mpirun exited 0"; exit 1; }
grep -q "process rank 1" "$WORK/log" || { echo "no message naming rank 1:"; cat "$WORK/log"; exit 1; }
echo "ok"
