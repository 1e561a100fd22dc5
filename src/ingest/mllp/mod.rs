//! MLLP: framing (`codec`), connection slots (`slots`) and the TCP listener (`listener`).

pub mod codec;
pub mod listener;
pub mod slots;
