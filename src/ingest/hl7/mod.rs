//! The HL7 v2 feed: parse (bytes to `Message`), feed (the table of supported types, mapping,
//! submission to the shared ingest), ack (the reply: ACK/NAK from an outcome).
//!
//! Entry points: `Hl7Feed::begin` for an inbound frame and `Pending::finish` for its ACKs;
//! `Message::parse` and `build_ack` for tools and tests.

mod ack;
pub mod feed;
mod parse;
#[cfg(test)]
mod tests;

pub use ack::{
    AckCode, AckError, AckHeader, AckMode, DEFAULT_VERSION, ErrLocation, ErrSeverity, Refusal, build_ack, escape,
    hl7_error_text,
};
pub use feed::{FEEDS, Hl7Feed, Pending, hl7_timestamp};
pub use parse::{
    Charset, Delimiters, ErrorLocation, Field, Hl7Error, Hl7ErrorKind, Message, ParseLimits, Repetition, Segment,
    Value, is_legal_delimiter, unescape, unescape_with,
};
