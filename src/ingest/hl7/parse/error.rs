//! What went wrong while parsing, and where.

use super::*;

/// What went wrong. `ack_code` gives the HL7 table 0357 code to NAK with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Hl7ErrorKind {
    #[error("message is empty")]
    Empty,
    #[error("message does not start with an MSH segment")]
    NotMsh,
    #[error("bad delimiters: {0}")]
    BadDelimiters(String),
    #[error("unsupported character set {0:?}")]
    UnsupportedCharset(String),
    #[error("bytes are not valid {0}")]
    InvalidEncoding(String),
    #[error("invalid segment name {0:?}")]
    InvalidSegmentName(String),
    #[error("required field is missing")]
    MissingField,
    #[error("message is larger than {0} bytes")]
    TooLarge(usize),
    #[error("message has more than {0} segments")]
    TooManySegments(usize),
    #[error("segment has more than {0} fields")]
    TooManyFields(usize),
    #[error("field has more than {0} repetitions")]
    TooManyRepetitions(usize),
}

impl Hl7ErrorKind {
    /// Suggested HL7 table 0357 code for the ERR segment of the NAK.
    pub fn ack_code(&self) -> u16 {
        match self {
            Hl7ErrorKind::Empty | Hl7ErrorKind::NotMsh | Hl7ErrorKind::InvalidSegmentName(_) => 100,
            Hl7ErrorKind::MissingField => 101,
            Hl7ErrorKind::BadDelimiters(_) | Hl7ErrorKind::InvalidEncoding(_) => 102,
            // Table 0357 has no charset code; 203 is what receivers conventionally use.
            Hl7ErrorKind::UnsupportedCharset(_) => 203,
            Hl7ErrorKind::TooLarge(_)
            | Hl7ErrorKind::TooManySegments(_)
            | Hl7ErrorKind::TooManyFields(_)
            | Hl7ErrorKind::TooManyRepetitions(_) => 207,
        }
    }
}

/// Where an error was found. Everything is optional because some errors
/// (an empty message) have no segment to point at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorLocation {
    /// 1-based position of the segment in the message (blank lines not counted).
    pub segment_index: Option<usize>,
    pub segment: Option<String>,
    /// HL7 field number (MSH-1 is the field separator).
    pub field: Option<usize>,
    /// Byte offset in the original input, BOM and leading whitespace included.
    pub position: Option<usize>,
}

impl fmt::Display for ErrorLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = " at";
        if let Some(i) = self.segment_index {
            write!(f, "{sep} segment {i}")?;
            if let Some(name) = &self.segment {
                write!(f, " ({name})")?;
            }
            sep = ",";
        } else if let Some(name) = &self.segment {
            write!(f, "{sep} segment {name}")?;
            sep = ",";
        }
        if let Some(n) = self.field {
            write!(f, "{sep} field {n}")?;
            sep = ",";
        }
        if let Some(p) = self.position {
            write!(f, "{sep} byte {p}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}{location}")]
pub struct Hl7Error {
    pub kind: Hl7ErrorKind,
    pub location: ErrorLocation,
}

impl Hl7Error {
    pub(super) fn new(kind: Hl7ErrorKind, location: ErrorLocation) -> Self {
        Self { kind, location }
    }
}
