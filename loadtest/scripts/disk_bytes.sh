#!/usr/bin/env bash
# Run from the repository root after `cargo build --release -p vigil -p vigil-loadtest`.
# Issue 14: bytes on disk per stored message. A fresh `vigil serve`, the harness at RATE msg/s
# (PCD-01 ORU^R01 with 8 OBX, ~1.2 KB each) for SECS seconds, a clean stop (SIGTERM), then
# `vigil store compact` where the binary has it (every keyspace flushed and major-compacted,
# with Vigil stopped) and `du -sb`: bytes of the data dir over messages stored (rows of the `messages` keyspace, one
# per message). Prints the harness table (achieved rate, ACK p50/p99), each keyspace's rows and
# bytes, and the totals. Knobs: RATE (2000), SECS (30), PATIENTS (500), BIN, LT, MLLP_PORT,
# HTTP_PORT, KEEP=1 keeps the data dir. On a shared machine: `nice -n 19 ionice -c3 bash
# loadtest/scripts/disk_bytes.sh`. A data dir left by an older binary (without `store compact`)
# can be compacted by a newer one: `vigil store compact --data-dir DIR`, then `du -sb DIR`.
set -eu
MLLP_PORT=${MLLP_PORT:-22575}
HTTP_PORT=${HTTP_PORT:-28080}
BIN=${BIN:-target/release/vigil}
LT=${LT:-target/release/vigil-loadtest}
RATE=${RATE:-2000}
SECS=${SECS:-30}
PATIENTS=${PATIENTS:-500}
d=$(mktemp -d)
data="$d/data"
$BIN serve --data-dir "$data" --mllp-addr 127.0.0.1:$MLLP_PORT --http-addr 127.0.0.1:$HTTP_PORT >> "$d/log" 2>&1 &
pid=$!
for _ in $(seq 1 600); do curl -sf http://127.0.0.1:$HTTP_PORT/healthz > /dev/null && break; sleep 0.1; done
echo "### load: $RATE msg/s x $SECS s, 8 connections, $PATIENTS patients"; uptime
$LT rate --mllp 127.0.0.1:$MLLP_PORT --rate "$RATE" --duration "$SECS" --connections 8 --patients "$PATIENTS" 2>&1 | grep -E "^\|"
accepted=$(curl -s http://127.0.0.1:$HTTP_PORT/metrics | sed -n 's/^vigil_messages_accepted_total \([0-9]*\).*/\1/p')
echo "messages accepted: ${accepted:-?}"
kill -TERM $pid
wait $pid || true
echo "### after a clean stop"
stopped=$(du -sb "$data" | cut -f1)
echo "data dir: $stopped bytes (fjall: $(du -sb "$data/fjall" | cut -f1); journals: $(cat "$data"/fjall/*.jnl 2>/dev/null | wc -c))"
[ -n "${accepted:-}" ] && [ "$accepted" -gt 0 ] && echo "bytes per message before compaction: $((stopped / accepted))"
if ! $BIN store compact --help > /dev/null 2>&1; then
  # A binary without `store compact`: what is on disk after the stop is all it can tell.
  echo "this vigil has no 'store compact': figures above are before compaction; data dir kept: $data"
  exit 0
fi
echo "### after vigil store compact"
out=$($BIN store compact --data-dir "$data")
echo "$out"
total=$(du -sb "$data" | cut -f1)
fjall=$(du -sb "$data/fjall" | cut -f1)
messages=$(echo "$out" | sed -n 's/^keyspace messages: \([0-9]*\) rows.*/\1/p')
echo "data dir: $total bytes (fjall: $fjall), messages stored: $messages"
if [ -n "$messages" ] && [ "$messages" -gt 0 ]; then
  tables=$(echo "$out" | sed -n 's/.*(tables \([0-9]*\), journal \([0-9]*\))$/\1/p')
  journal=$(echo "$out" | sed -n 's/.*(tables \([0-9]*\), journal \([0-9]*\))$/\2/p')
  echo "bytes on disk per message: $((total / messages)) (fjall: $((fjall / messages)))"
  # fjall keeps its active journal file after the flush (it drops journals once rotated, at
  # 64 MB): a bounded cost however large the store, so the tables are the per-message figure.
  [ -n "$tables" ] && echo "bytes in tables per message: $((tables / messages)) (journal kept: $journal bytes)"
  for ks in events messages alerts alert_log open_alerts; do
    b=$(echo "$out" | sed -n "s/^keyspace $ks: [0-9]* rows, \([0-9]*\) bytes/\1/p")
    [ -n "$b" ] && echo "  $ks: $((b / messages)) bytes per message"
  done
fi
if [ "${KEEP:-0}" = 1 ]; then echo "kept: $data"; else rm -rf "$d"; fi
