//! MLLP frame -> hl7 (parse: bytes to `Message`; encode: escaping and ACK/NAK) -> Vigil event mapping.
//!
//! Entry points: `Message::parse` for inbound bytes, `build_ack` with
//! `AckHeader::from_message` (or `AckHeader::fallback` when parsing failed)
//! for the reply.

mod encode;
mod parse;
#[cfg(test)]
mod tests;

pub use encode::{
    AckCode, AckError, AckHeader, DEFAULT_VERSION, ErrLocation, ErrSeverity, build_ack, escape, hl7_error_text,
};
pub use parse::{
    Charset, Delimiters, ErrorLocation, Field, Hl7Error, Hl7ErrorKind, Message, ParseLimits, Repetition, Segment,
    Value, is_legal_delimiter, unescape, unescape_with,
};
