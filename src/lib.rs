//! Vigil: a real-time clinical event platform. This crate holds every adapter (MLLP, HL7,
//! HTTP/WebSocket, Rhai, storage) and the wiring; the domain core is `vigil-actors`.
pub mod accept;
pub mod alerts;
pub mod app;
pub mod audit;
pub mod auth;
pub mod config;
pub mod console;
pub mod crypto;
pub mod demo_monitor;
/// What each fuzz target checks, shared by `fuzz/` (libFuzzer, nightly) and the stable seeded
/// run in CI (`cargo test -p vigil --lib fuzz`).
#[cfg(any(test, feature = "testing"))]
pub mod fuzz;
pub mod http;
pub mod ingest;
pub mod rules;
pub mod store;
pub mod vocab;
