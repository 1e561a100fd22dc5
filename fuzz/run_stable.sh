#!/usr/bin/env bash
# Coverage-guided fuzzing on the stable toolchain, without cargo-fuzz: libFuzzer (libfuzzer-sys
# builds it from C++: needs a C++ compiler, e.g. apt-get install g++) linked into each target,
# the Rust code instrumented with LLVM's SanitizerCoverage through stable -C flags. `--target`
# keeps RUSTFLAGS off build scripts and proc macros (instrumented build scripts do not link).
#
#   fuzz/run_stable.sh [SECONDS] [TARGET...]    (default 60 s each, every target)
#
# Corpora in fuzz/corpus/<target> (created; seeds welcome), crashes in fuzz/artifacts/<target>.
# No AddressSanitizer (needs nightly -Zsanitizer); the crate forbids unsafe, so it adds little.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(hl7_parse mllp_decode fhir_map ws_client_frame rule_meta config_file)
triple="$(rustc -vV | sed -n 's/^host: //p')"
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Copt-level=1"
bins=()
for t in "${targets[@]}"; do bins+=(--bin "$t"); done
# fuzz/Cargo.lock follows the main crate (not --locked: it is its own workspace).
cargo build --target "$triple" "${bins[@]}"
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  echo "== $t: ${secs} s"
  "target/$triple/debug/$t" "corpus/$t" -max_total_time="$secs" -artifact_prefix="artifacts/$t/" \
    -print_final_stats=1 2>&1 | grep -aE "^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb|INFO: Loaded 1 modules)|SUMMARY|panicked" || true
done
