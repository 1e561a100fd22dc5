#!/usr/bin/env bash
# The long form of the crash-cycle test (docs/RELIABILITY.md, "Crash safety"): N cycles (default
# 100) of starting the real binary on the same data, 4 patients sending pipelined batches, and
# `kill -9` at a random moment; then every ACKed message stored, each once, in per-patient order,
# and each (patient, rule) alert raised once across all restarts. CI runs 5
# (`cargo test --test it acked_messages_survive`).
set -euo pipefail
cd "$(dirname "$0")/.."
cycles="${1:-100}"
VIGIL_CRASH_CYCLES="$cycles" cargo test --locked --test it acked_messages_survive -- --nocapture 2>&1 \
  | grep -E "crash cycle|crash cycles:|test result|panicked" 
