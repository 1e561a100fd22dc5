//! Arbitrary bytes as a rule source (`PUT /api/rules`, the rules directory): compiled in the
//! hardened Rhai engine, `meta()` read. Must never panic or run unbounded; what loads has an id.
//! The check is shared with the stable seeded run in CI: `vigil::fuzz::rule_meta`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vigil::fuzz::rule_meta(data));
