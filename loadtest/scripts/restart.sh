#!/usr/bin/env bash
# Run from the repository root after `cargo build --release -p vigil -p vigil-loadtest`.
# Issue 12 benchmark (a): restart on a store of >= 1 M messages, then the harness at 1,000 msg/s:
# ACK p99 of the first 10 s after the restart beside the p99 of the next 10 s (warm).
# Knobs: LOAD_SECS (default 210: 1.05 M messages at 5,000 msg/s); PREWARM_MODES, the
# VIGIL_PREWARM value of each restart in turn on the same store (e.g. "false true": without,
# then with prewarm; default one restart with the server's default; none: no restart); PERF_OUT (a profile of
# the first 10 s after the first restart); LOAD_RATE (default 5000: msg/s of the load phase;
# a rate the server sustains keeps its actors' mailboxes short, so the clean stop that ends
# the load phase drains them and writes their snapshots); KEEP_STORE=dir (copy the loaded
# store and its keys there after its clean stop); FROM_STORE=dir (skip the load phase: restart a copy of a
# store kept earlier, so two builds restart the same store).
set -u
# Ports overridable so that two benchmarks on one machine do not meet.
MLLP_PORT=${MLLP_PORT:-22575}
HTTP_PORT=${HTTP_PORT:-28080}
TREE=$PWD
BIN=${BIN:-${AFTER_TARGET:-target}/release/vigil}
LT=${LT:-${AFTER_TARGET:-target}/release/vigil-loadtest}
d=$(mktemp -d ${TMPBASE:+-p "$TMPBASE"})   # TMPBASE=/dev/shm: on a tmpfs (a store built fast)
start() { cd "$TREE"; $BIN serve --data-dir "$d/data" --mllp-addr 127.0.0.1:$MLLP_PORT --http-addr 127.0.0.1:$HTTP_PORT >> "$d/log" 2>&1 & pid=$!
  for i in $(seq 1 600); do curl -sf http://127.0.0.1:$HTTP_PORT/healthz >/dev/null && break; sleep 0.1; done; }
stop() { t2=$(date +%s.%N); kill -TERM $pid; wait $pid; t3=$(date +%s.%N); echo "SIGTERM to exit: $(echo "$t3 - $t2" | bc) s"; }
if [ -n "${FROM_STORE:-}" ]; then
  cp -a "$FROM_STORE/data" "$FROM_STORE/data-keys" "$d/"
  echo "### store copied from $FROM_STORE"
else
  start
  LOAD_SECS=${LOAD_SECS:-210}   # 210 s at 5,000 msg/s: 1.05 M messages
  LOAD_RATE=${LOAD_RATE:-5000}
  echo "### load: $LOAD_RATE msg/s x $LOAD_SECS s, 5,000 patients"; uptime
  $LT rate --mllp 127.0.0.1:$MLLP_PORT --rate $LOAD_RATE --duration $LOAD_SECS --connections 8 --patients 5000 2>&1 | grep -E "^\|"
  curl -s http://127.0.0.1:$HTTP_PORT/metrics | grep -E "^vigil_messages_accepted_total|^vigil_patient_actors"
  stop
  [ -n "${KEEP_STORE:-}" ] && { rm -rf "$KEEP_STORE"; mkdir -p "$KEEP_STORE"; cp -a "$d/data" "$d/data-keys" "$KEEP_STORE/"; echo "### store kept in $KEEP_STORE"; }
fi
du -sh "$d/data"
first=1
for mode in ${PREWARM_MODES:-default}; do
  [ "$mode" = none ] && continue   # PREWARM_MODES=none: build (and keep) a store, restart nothing
  [ "$mode" = default ] || export VIGIL_PREWARM=$mode
  echo "## restart (VIGIL_PREWARM=${VIGIL_PREWARM:-default})"
  t0=$(date +%s.%N); start; t1=$(date +%s.%N)
  echo "restart to healthz: $(echo "$t1 - $t0" | bc) s"
  grep -a "patient actors prewarmed\|journal flushed" "$d/log" | tail -2 | sed 's/\x1b\[[0-9;]*m//g'
  echo "### first 10 s after restart, 1,000 msg/s"; uptime
  # VMSTAT=1: the machine's CPU and disk each second of those 10 s.
  [ -n "${VMSTAT:-}" ] && { vmstat -w 1 11 & }
  # PERF_OUT=file: a call-graph profile of the server over those 10 s.
  [ -n "${PERF_OUT:-}" ] && [ $first = 1 ] && { perf record -g -o "$PERF_OUT" -p $pid -- sleep 10 > /dev/null 2>&1 & }
  $LT rate --mllp 127.0.0.1:$MLLP_PORT --rate 1000 --duration 10 --connections 8 --patients 5000 2>&1 | grep -E "^\|"
  uptime
  # Where the starts' time went (vigil_actor_start_seconds by step; starts from snapshot / log).
  curl -s http://127.0.0.1:$HTTP_PORT/metrics | grep -E "^vigil_actor_start_seconds_(sum|count)|^vigil_actor_starts_total|^vigil_stage_seconds_(sum|count)|^vigil_patient_actors"
  echo "### next 10 s (warm)"
  $LT rate --mllp 127.0.0.1:$MLLP_PORT --rate 1000 --duration 10 --connections 8 --patients 5000 2>&1 | grep -E "^\|"
  uptime
  stop
  first=0
done
rm -rf "$d"
