#!/usr/bin/env bash
# The long form of the overload test (docs/RELIABILITY.md, "Overload"): 64 MLLP connections
# offered 3x and then 5x the measured capacity, open loop, for N seconds each (default 20), with
# poisoned messages mixed in; every message answered, nothing accepted lost, server memory
# bounded. CI runs 2 s each (`cargo test --test it overload`).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-20}"
VIGIL_OVERLOAD_SECS="$secs" cargo test --locked --test it overload -- --nocapture 2>&1 \
  | grep -E "capacity|x: offered|server memory|acknowledged|test result|panicked|cut off"
