#!/usr/bin/env bash
# Run from the repository root after `cargo build --release -p vigil -p vigil-loadtest`.
# Issue 12 benchmark (a): restart on a store of >= 1 M messages, then the harness at 1,000 msg/s:
# ACK p99 of the first 10 s after the restart beside the p99 of the next 10 s (warm).
set -u
TREE=$PWD
BIN=${BIN:-${AFTER_TARGET:-target}/release/vigil}
LT=${AFTER_TARGET:-target}/release/vigil-loadtest
d=$(mktemp -d)
start() { cd "$TREE"; $BIN serve --data-dir "$d/data" --mllp-addr 127.0.0.1:22575 --http-addr 127.0.0.1:28080 >> "$d/log" 2>&1 & pid=$!
  for i in $(seq 1 600); do curl -sf http://127.0.0.1:28080/healthz >/dev/null && break; sleep 0.1; done; }
start
echo "### load: 5,000 msg/s x 210 s, 5,000 patients"
$LT rate --mllp 127.0.0.1:22575 --rate 5000 --duration 210 --connections 8 --patients 5000 2>&1 | grep -E "^\|"
curl -s http://127.0.0.1:28080/metrics | grep -E "^vigil_mllp_accepted_total|^vigil_patients"
kill -TERM $pid; wait $pid
du -sh "$d/data"
t0=$(date +%s.%N); start; t1=$(date +%s.%N)
echo "restart to healthz: $(echo "$t1 - $t0" | bc) s"
echo "### first 10 s after restart, 1,000 msg/s"
$LT rate --mllp 127.0.0.1:22575 --rate 1000 --duration 10 --connections 8 --patients 5000 2>&1 | grep -E "^\|"
echo "### next 10 s (warm)"
$LT rate --mllp 127.0.0.1:22575 --rate 1000 --duration 10 --connections 8 --patients 5000 2>&1 | grep -E "^\|"
kill -TERM $pid; wait $pid; rm -rf "$d"
