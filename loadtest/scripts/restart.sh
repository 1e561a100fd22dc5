#!/usr/bin/env bash
# Run from the repository root after `cargo build --release -p vigil -p vigil-loadtest`.
# Issue 12 benchmark (a): restart on a store of >= 1 M messages, then the harness at 1,000 msg/s:
# ACK p99 of the first 10 s after the restart beside the p99 of the next 10 s (warm).
# Knobs: LOAD_SECS (default 210: 1.05 M messages at 5,000 msg/s); PREWARM_MODES, the
# VIGIL_PREWARM value of each restart in turn on the same store (e.g. "false true": without,
# then with prewarm; default one restart with the server's default); PERF_OUT (a profile of
# the first 10 s after the first restart).
set -u
# Ports overridable so that two benchmarks on one machine do not meet.
MLLP_PORT=${MLLP_PORT:-22575}
HTTP_PORT=${HTTP_PORT:-28080}
TREE=$PWD
BIN=${BIN:-${AFTER_TARGET:-target}/release/vigil}
LT=${LT:-${AFTER_TARGET:-target}/release/vigil-loadtest}
d=$(mktemp -d)
start() { cd "$TREE"; $BIN serve --data-dir "$d/data" --mllp-addr 127.0.0.1:$MLLP_PORT --http-addr 127.0.0.1:$HTTP_PORT >> "$d/log" 2>&1 & pid=$!
  for i in $(seq 1 600); do curl -sf http://127.0.0.1:$HTTP_PORT/healthz >/dev/null && break; sleep 0.1; done; }
stop() { t2=$(date +%s.%N); kill -TERM $pid; wait $pid; t3=$(date +%s.%N); echo "SIGTERM to exit: $(echo "$t3 - $t2" | bc) s"; }
start
LOAD_SECS=${LOAD_SECS:-210}   # 210 s at 5,000 msg/s: 1.05 M messages
echo "### load: 5,000 msg/s x $LOAD_SECS s, 5,000 patients"; uptime
$LT rate --mllp 127.0.0.1:$MLLP_PORT --rate 5000 --duration $LOAD_SECS --connections 8 --patients 5000 2>&1 | grep -E "^\|"
curl -s http://127.0.0.1:$HTTP_PORT/metrics | grep -E "^vigil_messages_accepted_total|^vigil_patient_actors"
stop
du -sh "$d/data"
first=1
for mode in ${PREWARM_MODES:-default}; do
  [ "$mode" = default ] || export VIGIL_PREWARM=$mode
  echo "## restart (VIGIL_PREWARM=${VIGIL_PREWARM:-default})"
  t0=$(date +%s.%N); start; t1=$(date +%s.%N)
  echo "restart to healthz: $(echo "$t1 - $t0" | bc) s"
  grep -a "patient actors prewarmed" "$d/log" | tail -1 | sed 's/\x1b\[[0-9;]*m//g'
  echo "### first 10 s after restart, 1,000 msg/s"; uptime
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
