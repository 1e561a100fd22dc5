//! Character sets: MSH-18, and decoding the message bytes into text.

use super::*;

/// Character set the message text was decoded from (MSH-18).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Charset {
    /// Declared ASCII. Non-ASCII bytes are tolerated (UTF-8 if valid, else
    /// Latin-1) because senders that say ASCII routinely send accented names.
    Ascii,
    /// ISO 8859-1, declared as `8859/1` or detected when MSH-18 is empty and the
    /// bytes are not valid UTF-8.
    Latin1,
    /// UTF-8, declared as `UNICODE UTF-8` or detected when MSH-18 is empty.
    Utf8,
}

impl Charset {
    /// The HL7 table 0211 spelling, for writing MSH-18.
    pub fn hl7_name(&self) -> &'static str {
        match self {
            Charset::Ascii => "ASCII",
            Charset::Latin1 => "8859/1",
            Charset::Utf8 => "UNICODE UTF-8",
        }
    }

    /// Maps an MSH-18 value (case-insensitive, common aliases accepted).
    /// `None` means the set is not supported.
    pub fn from_hl7_name(name: &str) -> Option<Charset> {
        match name.trim().to_ascii_uppercase().as_str() {
            "ASCII" | "US-ASCII" => Some(Charset::Ascii),
            "8859/1" | "ISO-8859-1" | "ISO8859-1" | "ISO_8859-1" | "LATIN1" | "LATIN-1" | "ISO IR100"
            | "ISO_IR 100" => Some(Charset::Latin1),
            "UNICODE UTF-8" | "UNICODE UTF8" | "UTF-8" | "UTF8" => Some(Charset::Utf8),
            _ => None,
        }
    }

    /// Encodes outgoing text (e.g. an ACK) for the wire. Characters the set
    /// cannot carry become `?` rather than failing, because a degraded ACK is
    /// better than none.
    pub fn encode<'a>(&self, text: &'a str) -> Cow<'a, [u8]> {
        let limit = match self {
            Charset::Utf8 => return Cow::Borrowed(text.as_bytes()),
            Charset::Ascii => 0x7F,
            Charset::Latin1 => 0xFF,
        };
        if text.is_ascii() {
            return Cow::Borrowed(text.as_bytes());
        }
        Cow::Owned(
            text.chars()
                .map(|c| u8::try_from(u32::from(c)).ok().filter(|&b| u32::from(b) <= limit).unwrap_or(b'?'))
                .collect(),
        )
    }
}

/// MSH-18 has to be read from raw bytes because it decides how to decode them.
pub(super) fn declared_charset<'a>(msh_line: &'a [u8], d: &Delimiters) -> (usize, &'a [u8]) {
    match msh_field_bytes(msh_line, ascii_byte(d.field), 18) {
        Some((offset, raw)) => (offset, first_component_bytes(raw, d)),
        None => (msh_line.len(), &[]),
    }
}

/// Decodes the whole message. Returns the text, the effective charset and
/// whether byte offsets changed (Latin-1 widening), or the offset of the
/// first invalid byte when UTF-8 was declared.
pub(super) fn decode(body: &[u8], wanted: Option<Charset>) -> Result<(String, Charset, bool), usize> {
    match wanted {
        Some(Charset::Utf8) => match std::str::from_utf8(body) {
            Ok(s) => Ok((s.to_owned(), Charset::Utf8, false)),
            Err(e) => Err(e.valid_up_to()),
        },
        Some(Charset::Latin1) => Ok((latin1(body), Charset::Latin1, !body.is_ascii())),
        Some(Charset::Ascii) => Ok(match std::str::from_utf8(body) {
            Ok(s) => (s.to_owned(), Charset::Ascii, false),
            Err(_) => (latin1(body), Charset::Ascii, true),
        }),
        None => Ok(match std::str::from_utf8(body) {
            Ok(s) => (s.to_owned(), Charset::Utf8, false),
            Err(_) => (latin1(body), Charset::Latin1, true),
        }),
    }
}

pub(crate) fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

/// Decodes bytes of unknown charset without loss: UTF-8 if valid, else Latin-1.
pub(crate) fn decode_auto(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => latin1(bytes),
    }
}
