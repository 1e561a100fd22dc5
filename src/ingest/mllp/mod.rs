//! MLLP: framing (`codec`) and the TCP listener (`listener`).

pub mod codec;
pub mod listener;
