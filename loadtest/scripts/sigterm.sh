#!/usr/bin/env bash
# Run from the repository root after `cargo build --release -p vigil -p vigil-loadtest`.
# Issue 12 benchmark (c): SIGTERM with N live patient actors (default 50,000, passivation off):
# the time from the signal to the process's exit, and the server's own account of its shutdown
# stages ("vigil stopped"). Each round: N patients each sent one message on a store on a tmpfs
# (a first message per new monitor makes durable device-association writes, slow to do 50,000
# times on a busy disk), a clean stop, the store copied to disk, a restart without prewarm, one
# more message to each patient (N live actors, each rebuilt from its snapshot), then SIGTERM.
# ROUNDS (default 1); BIN/LT pick the binaries.
set -u
MLLP_PORT=${MLLP_PORT:-22575}
HTTP_PORT=${HTTP_PORT:-28080}
BIN=${BIN:-target/release/vigil}
LT=${LT:-target/release/vigil-loadtest}
PATIENTS=${PATIENTS:-50000}
RATE=${RATE:-2500}
serve() { # data-dir log
  VIGIL_PREWARM=false $BIN serve --config "$d/vigil.toml" --data-dir "$1" --mllp-addr 127.0.0.1:$MLLP_PORT \
    --http-addr 127.0.0.1:$HTTP_PORT >> "$2" 2>&1 &
  pid=$!
  for i in $(seq 1 600); do curl -sf http://127.0.0.1:$HTTP_PORT/healthz > /dev/null && break; sleep 0.1; done
}
send() { $LT rate --mllp 127.0.0.1:$MLLP_PORT --rate "$RATE" --duration $(( (PATIENTS + RATE - 1) / RATE )) \
    --connections 8 --patients "$PATIENTS" 2>&1 | grep -E "^\| (sent|acked|errors|achieved|latency p50|latency p99 )"; }
for round in $(seq 1 "${ROUNDS:-1}"); do
  d=$(mktemp -d); shm=$(mktemp -d -p /dev/shm)
  printf '[patients]\npassivate_after_secs = 0\n' > "$d/vigil.toml"
  echo "### round $round: $PATIENTS patients, one message each at $RATE msg/s (tmpfs store)"; uptime
  serve "$shm/data" "$d/log"; send; kill -TERM $pid; wait $pid
  cp -a "$shm/data" "$shm/data-keys" "$d/"; rm -rf "$shm"
  echo "### restarted on disk, one more message each"
  serve "$d/data" "$d/log"; send
  sleep 2   # the last acknowledgements' census writes settle
  curl -s http://127.0.0.1:$HTTP_PORT/metrics | grep -E "^vigil_patient_actors"
  echo "RSS before SIGTERM: $(( $(ps -o rss= -p $pid) / 1024 )) MiB"
  t0=$(date +%s.%N); kill -TERM $pid; wait $pid; t1=$(date +%s.%N)
  echo "SIGTERM to exit: $(echo "$t1 - $t0" | bc) s"
  grep -a "vigil stopped" "$d/log" | sed 's/\x1b\[[0-9;]*m//g' | tail -1
  rm -rf "$d"
done
