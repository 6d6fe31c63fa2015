#!/usr/bin/env bash
# The main job on a fresh machine: install what is missing, start Kafka and Redis on 127.0.0.1,
# run a driftwatch worker, push a synthetic stream through it with `driftwatch demo`, print the
# outcome, then stop the worker and whatever services this script started.
# Extra arguments go to `driftwatch demo` (see `driftwatch demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate

started=()
for svc in kafka redis; do
  if python3 scripts/services.py start "$svc" --json | grep -q '"result": "started"'; then
    started+=("$svc")
  fi
done
workdir=${DRIFTWATCH_HOME:-$HOME/.cache/driftwatch}/demo
mkdir -p "$workdir"
cleanup() {
  if [ -n "${worker_pid:-}" ] && kill -0 "$worker_pid" 2>/dev/null; then
    kill -TERM "$worker_pid"
    for _ in $(seq 300); do kill -0 "$worker_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$worker_pid" 2>/dev/null || true
  fi
  rm -rf "$workdir/driftwatch-${run:-none}-data"
  for svc in "${started[@]}"; do python3 scripts/services.py stop "$svc" || true; done
}
trap cleanup EXIT

# default demo: 20,000 card transactions at 1,000 events/s, a mean shift in `amount` between
# events 6,000 and 10,000, and a concept change (the fraud rule flips) from event 13,000
if [ $# -eq 0 ]; then
  set -- --events 20000 --drift mean_shift@6000-10000 --drift concept@13000
fi
export DRIFTWATCH_CONFIG=${DRIFTWATCH_CONFIG:-$PWD/driftwatch.toml}
export DRIFTWATCH_SNAPSHOT_KEY=${DRIFTWATCH_SNAPSHOT_KEY:-demo-only-snapshot-key}
# each run gets its own topics, consumer group and Redis prefix: a fresh model and fresh
# monitors, and nothing of an earlier run (or of anyone else's data) is touched
run=demo$(date +%s)
export DRIFTWATCH_WORKER__APP_ID="driftwatch-$run" DRIFTWATCH_REDIS__PREFIX="$run"
export DRIFTWATCH_TOPICS__EVENTS="$run.events" DRIFTWATCH_TOPICS__LABELS="$run.labels"
export DRIFTWATCH_TOPICS__PREDICTIONS="$run.predictions" DRIFTWATCH_TOPICS__ALERTS="$run.alerts"
export DRIFTWATCH_TOPICS__DLQ="$run.events.dlq" DRIFTWATCH_TOPICS__MONITOR="$run.monitor"
export DRIFTWATCH_TOPICS__SHADOW="$run.predictions.shadow"
# the demo adapts: a concept_drift or performance alert starts a fresh challenger, promoted
# once it beats the served model on the same delayed labels (off in the sample config)
export DRIFTWATCH_LIFECYCLE__RETRAIN_ON=${DRIFTWATCH_LIFECYCLE__RETRAIN_ON:-'["concept_drift", "performance"]'}
export DRIFTWATCH_LIFECYCLE__AUTO_PROMOTE=${DRIFTWATCH_LIFECYCLE__AUTO_PROMOTE:-true}
export DRIFTWATCH_LIFECYCLE__COMPARE_WINDOW=${DRIFTWATCH_LIFECYCLE__COMPARE_WINDOW:-1000}
# at the sample's 0.05 the champion re-learns the flipped rule about as fast as a fresh
# challenger learns it, and whether one is promoted is a coin toss; at 0.02 the champion is
# steadier before the change and the fresh challenger clearly wins after it (README)
export DRIFTWATCH_MODEL__LEARNING_RATE=${DRIFTWATCH_MODEL__LEARNING_RATE:-0.02}
echo "[demo] topics $run.*; watch alerts with: DRIFTWATCH_TOPICS__ALERTS=$run.alerts driftwatch tail alerts" >&2
# from the work directory: Faust keeps an (unused, here) `<app_id>-data` folder in the cwd
(cd "$workdir" && exec driftwatch --log-level warning worker) > "$workdir/worker.log" 2>&1 &
worker_pid=$!
echo "[demo] worker started (pid $worker_pid, log $workdir/worker.log)" >&2
driftwatch --log-level warning demo "$@" || { echo "[demo] failed; worker log:" >&2; tail -40 "$workdir/worker.log" >&2; exit 1; }
