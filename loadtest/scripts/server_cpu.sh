#!/usr/bin/env bash
# Run from the repository root after `cargo build --release -p vigil -p vigil-loadtest`.
# Server CPU per run (issue 12 (d), issue 14): a fresh `vigil serve` (BIN, run from TREE, whose
# rules it loads), the harness's `rate` load at RATE msg/s for SECS s, then the server's CPU
# time (utime+stime from /proc/PID/stat, and each alone) and context switches (every thread's voluntary and
# involuntary switches) over the run, its thread count, and the harness's ACK p50/p99.
# Usage: LABEL=after BIN=target/release/vigil [WARMUP=5] bash loadtest/scripts/server_cpu.sh
set -u
LABEL=${LABEL:-run}
BIN=$(realpath "${BIN:-target/release/vigil}")
LT=$(realpath "${LT:-target/release/vigil-loadtest}")
TREE=${TREE:-.}
RATE=${RATE:-5000}
SECS=${SECS:-15}
MLLP_PORT=${MLLP_PORT:-22575}
HTTP_PORT=${HTTP_PORT:-28080}
d=$(mktemp -d)
(cd "$TREE" && exec "$BIN" serve --data-dir "$d/data" --mllp-addr 127.0.0.1:$MLLP_PORT --http-addr 127.0.0.1:$HTTP_PORT > "$d/log" 2>&1) &
pid=$!
for _ in $(seq 1 100); do curl -sf http://127.0.0.1:$HTTP_PORT/healthz > /dev/null && break; sleep 0.2; done
switches() { cat /proc/$pid/task/*/status 2>/dev/null | awk '/ctxt_switches/ {s += $2} END {print s}'; }
user() { awk '{print $14}' /proc/$pid/stat; }
system() { awk '{print $15}' /proc/$pid/stat; }
# WARMUP seconds of the same load first, outside the measured window (the patients' actors are
# created and their stores read there, not in the steady state measured).
if [ "${WARMUP:-0}" -gt 0 ]; then
  "$LT" rate --mllp 127.0.0.1:$MLLP_PORT --rate "$RATE" --duration "$WARMUP" > /dev/null 2>&1
fi
u0=$(user); s0=$(system); c0=$(switches)
latency=$("$LT" rate --mllp 127.0.0.1:$MLLP_PORT --rate "$RATE" --duration "$SECS" 2>/dev/null \
  | grep -E "latency p(50|99) " | awk -F'|' '{gsub(/ +/, " "); printf "%s=%s ", $2, $3}')
u1=$(user); s1=$(system); c1=$(switches)
ticks=$(getconf CLK_TCK)
seconds() { echo "scale=2; $1 / $ticks" | bc; }
echo "$LABEL: server CPU $(seconds $((u1 - u0 + s1 - s0))) s (user $(seconds $((u1 - u0))), system $(seconds $((s1 - s0)))), context switches per message" \
  "$(echo "scale=2; ($c1 - $c0) / ($RATE * $SECS)" | bc), threads $(ls /proc/$pid/task | wc -l), $latency"
kill -TERM $pid; wait $pid 2>/dev/null; rm -rf "$d"
