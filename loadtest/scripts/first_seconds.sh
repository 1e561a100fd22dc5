#!/usr/bin/env bash
# Run from the repository root. The start-up transient of a fresh store: one server, then N
# one-second harness runs in a row (each opens its 8 connections anew), so the first second
# (500 new patients, 500 new monitors) is measured apart from the steady state.
#   bash loadtest/scripts/first_seconds.sh [BIN [TREE [RATE [N]]]]
# BIN: the server (target/release/vigil), TREE: where it runs (its rules), RATE: msg/s (2000).
set -u
BIN=${1:-$PWD/target/release/vigil}; TREE=${2:-$PWD}; RATE=${3:-2000}; N=${4:-6}
LT=${LT:-$PWD/target/release/vigil-loadtest}
MLLP_PORT=${MLLP_PORT:-23575}; HTTP_PORT=${HTTP_PORT:-29080}
d=$(mktemp -d)
(cd "$TREE" && exec "$BIN" serve --data-dir "$d/data" --mllp-addr 127.0.0.1:$MLLP_PORT --http-addr 127.0.0.1:$HTTP_PORT > "$d/log" 2>&1) &
pid=$!
for i in $(seq 1 100); do curl -sf http://127.0.0.1:$HTTP_PORT/healthz >/dev/null && break; sleep 0.2; done
for i in $(seq 1 "$N"); do
  echo "second $i: $("$LT" rate --mllp 127.0.0.1:$MLLP_PORT --rate "$RATE" --duration 1 --connections 8 --patients 500 2>&1 \
    | grep -E '^\| (latency p50|latency p99 |latency max)' | tr -d '|' | tr '\n' ' ')"
done
kill -TERM $pid; wait $pid 2>/dev/null; rm -rf "$d"
