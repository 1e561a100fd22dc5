//! Vigil: a real-time clinical event platform. This crate holds every adapter (MLLP, HL7,
//! HTTP/WebSocket, Rhai, storage) and the wiring; the domain core is `vigil-actors`.
pub mod store;
pub mod alerts;
pub mod crypto;
pub mod rules;
pub mod auth;
pub mod vocab;
pub mod config;
pub mod ingest;
pub mod app;
pub mod http;
pub mod audit;
