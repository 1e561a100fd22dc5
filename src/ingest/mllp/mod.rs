//! MLLP: framing (`codec`), the per-address connection rate (`rate`), connection slots
//! (`slots`) and the TCP listener (`listener`).

pub mod codec;
pub mod listener;
pub mod rate;
pub mod slots;
