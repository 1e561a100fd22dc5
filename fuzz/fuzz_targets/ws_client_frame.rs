//! Arbitrary bytes as a WebSocket client frame, through the session's own parser
//! (`vigil::http::ws::parse_client_frame`). Must never panic. The check is shared with the
//! stable seeded run in CI: `vigil::fuzz::ws_client_frame`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vigil::fuzz::ws_client_frame(data));
