//! MLLP frame -> hl7::parse (this file: raw bytes to a navigable `Message`) -> Vigil event mapping; hl7::encode builds the ACK that goes back.
//!
//! The parser decodes the whole message once into a `String` and then only
//! records byte spans (segments and fields). Repetitions, components and
//! subcomponents are split on access, and escape sequences are decoded on
//! access into a `Cow`, so a value without an escape character never allocates.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

/// The HL7 "null": a value that is exactly two double quotes tells the
/// receiver to clear what it holds, which is not the same as "not sent".
const HL7_NULL: &str = "\"\"";

/// `\.sp N\` is a display hint; an attacker-sized N must not turn a few bytes
/// into megabytes of newlines.
const MAX_SP_LINES: usize = 64;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Delimiters declared by MSH-1 and MSH-2.
///
/// A delimiter the sender left out of MSH-2 is stored as the delimiter of the
/// enclosing level (missing repetition or escape => `field`, missing
/// subcomponent => `component`). Such a char can never occur inside the text
/// being split, so the level simply has one element and no escapes are decoded;
/// `has_repetition`, `has_escape` and `has_subcomponent` tell which were declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Delimiters {
    pub field: char,
    pub component: char,
    pub repetition: char,
    pub escape: char,
    pub subcomponent: char,
    /// v2.7 truncation character (5th char of MSH-2), if declared.
    pub truncation: Option<char>,
}

impl Default for Delimiters {
    fn default() -> Self {
        Self { field: '|', component: '^', repetition: '~', escape: '\\', subcomponent: '&', truncation: None }
    }
}

impl Delimiters {
    pub fn has_repetition(&self) -> bool {
        self.repetition != self.field
    }

    pub fn has_escape(&self) -> bool {
        self.escape != self.field
    }

    pub fn has_subcomponent(&self) -> bool {
        self.subcomponent != self.component
    }

    /// MSH-2 as it must be written for this set (positional, so it stops at
    /// the first delimiter that was not declared).
    pub fn encoding_characters(&self) -> String {
        let mut s = String::with_capacity(5);
        s.push(self.component);
        if !self.has_repetition() {
            return s;
        }
        s.push(self.repetition);
        if !self.has_escape() {
            return s;
        }
        s.push(self.escape);
        if !self.has_subcomponent() {
            return s;
        }
        s.push(self.subcomponent);
        if let Some(t) = self.truncation {
            s.push(t);
        }
        s
    }

    /// Checks that every declared delimiter is legal and that they are distinct.
    pub fn validate(&self) -> Result<(), String> {
        let declared = [
            Some(self.field),
            Some(self.component),
            self.has_repetition().then_some(self.repetition),
            self.has_escape().then_some(self.escape),
            self.has_subcomponent().then_some(self.subcomponent),
            self.truncation,
        ];
        let mut seen: Vec<char> = Vec::with_capacity(6);
        for c in declared.into_iter().flatten() {
            if !is_legal_delimiter(c) {
                return Err(format!("{c:?} is not a legal delimiter"));
            }
            if seen.contains(&c) {
                return Err(format!("delimiter {c:?} is used twice"));
            }
            seen.push(c);
        }
        Ok(())
    }
}

/// Delimiters must be ASCII punctuation: letters and digits are data, CR/LF end
/// segments, space and controls get trimmed by senders and MLLP framing, and
/// `"` would make the HL7 null `""` ambiguous.
pub fn is_legal_delimiter(c: char) -> bool {
    c.is_ascii_punctuation() && c != '"'
}

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

/// Bounds that keep a hostile or broken message from costing unbounded
/// memory or time. Exceeding one is an error, never a truncation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseLimits {
    pub max_segments: usize,
    pub max_fields_per_segment: usize,
    pub max_repetitions: usize,
    /// Caps the input size after trimming; each field costs ~32 bytes of
    /// index, so this bounds memory to a small multiple of the input.
    pub max_message_bytes: usize,
}

impl Default for ParseLimits {
    fn default() -> Self {
        Self {
            max_segments: 10_000,
            max_fields_per_segment: 1_000,
            max_repetitions: 1_000,
            max_message_bytes: 16 * 1024 * 1024,
        }
    }
}

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
    fn new(kind: Hl7ErrorKind, location: ErrorLocation) -> Self {
        Self { kind, location }
    }
}

/// A leaf value with the HL7 distinction between "not sent" and "null".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value<'a> {
    /// Absent or sent empty: the receiver should leave its data unchanged.
    Empty,
    /// Sent as `""`: the receiver should clear its data.
    Null,
    /// Unescaped text (may be empty if it consisted only of formatting escapes).
    Text(Cow<'a, str>),
}

impl<'a> Value<'a> {
    /// The text, or `""` for both `Empty` and `Null`.
    pub fn as_str(&self) -> &str {
        match self {
            Value::Text(t) => t,
            Value::Empty | Value::Null => "",
        }
    }

    pub fn into_string(self) -> String {
        match self {
            Value::Text(t) => t.into_owned(),
            Value::Empty | Value::Null => String::new(),
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    pub fn is_empty(&self) -> bool {
        matches!(self, Value::Empty)
    }

    /// `Some` only for real text, so `Null` and `Empty` both read as "no value".
    pub fn into_text(self) -> Option<Cow<'a, str>> {
        match self {
            Value::Text(t) => Some(t),
            Value::Empty | Value::Null => None,
        }
    }
}

/// Everything the spans point into, shared by all segments and fields so a
/// field can unescape itself without borrowing the `Message`.
#[derive(Debug)]
struct Shared {
    text: String,
    delimiters: Delimiters,
    charset: Charset,
    /// Input bytes skipped before the MSH (BOM, whitespace).
    base: usize,
    /// Latin-1 decoding changes byte lengths, so error positions must be
    /// mapped back to input offsets by counting chars.
    widened: bool,
}

impl Shared {
    fn input_pos(&self, text_pos: usize) -> usize {
        let inner =
            if self.widened { self.text.get(..text_pos).map_or(text_pos, |s| s.chars().count()) } else { text_pos };
        self.base + inner
    }

    fn slice(&self, start: usize, end: usize) -> &str {
        self.text.get(start..end).unwrap_or("")
    }
}

/// One field (all its repetitions).
#[derive(Clone)]
pub struct Field {
    shared: Arc<Shared>,
    start: usize,
    end: usize,
    /// MSH-1 and MSH-2 hold the delimiters themselves and must not be split.
    literal: bool,
}

impl Field {
    /// The field as sent: escaped, with all delimiters.
    pub fn raw(&self) -> &str {
        self.shared.slice(self.start, self.end)
    }

    /// True when the whole field is the HL7 null `""`.
    pub fn is_null(&self) -> bool {
        !self.literal && self.raw() == HL7_NULL
    }

    /// True when the field was sent empty.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Repetitions in order; an empty field has none.
    pub fn repetitions(&self) -> impl Iterator<Item = Repetition<'_>> {
        let raw = self.raw();
        let literal = self.literal;
        let rep = self.shared.delimiters.repetition;
        let shared: &Shared = &self.shared;
        let take = if raw.is_empty() { 0 } else { usize::MAX };
        raw.split(move |c: char| !literal && c == rep).take(take).map(move |r| Repetition { raw: r, shared, literal })
    }

    /// Repetition `n` (1-based).
    pub fn repetition(&self, n: usize) -> Option<Repetition<'_>> {
        self.repetitions().nth(n.checked_sub(1)?)
    }

    pub fn repetition_count(&self) -> usize {
        let raw = self.raw();
        if raw.is_empty() {
            0
        } else if self.literal {
            1
        } else {
            raw.matches(self.shared.delimiters.repetition).count() + 1
        }
    }

    /// Value at repetition/component/subcomponent (all 1-based).
    pub fn value(&self, rep: usize, comp: usize, sub: usize) -> Value<'_> {
        self.repetition(rep).map_or(Value::Empty, |r| r.value(comp, sub))
    }

    /// First repetition, component and subcomponent, unescaped; `""` when
    /// empty or null.
    pub fn text(&self) -> String {
        self.value(1, 1, 1).into_string()
    }
}

/// One repetition of a field; a cheap view borrowed from the message.
#[derive(Clone, Copy)]
pub struct Repetition<'a> {
    raw: &'a str,
    shared: &'a Shared,
    literal: bool,
}

impl<'a> Repetition<'a> {
    pub fn raw(&self) -> &'a str {
        self.raw
    }

    pub fn is_null(&self) -> bool {
        !self.literal && self.raw == HL7_NULL
    }

    pub fn component_count(&self) -> usize {
        if self.raw.is_empty() {
            0
        } else if self.literal {
            1
        } else {
            self.raw.matches(self.shared.delimiters.component).count() + 1
        }
    }

    /// Component `c` as sent (escaped, subcomponents included).
    pub fn component_raw(&self, c: usize) -> Option<&'a str> {
        if self.literal {
            return (c == 1).then_some(self.raw);
        }
        nth_part(self.raw, self.shared.delimiters.component, c)
    }

    /// Subcomponent `s` of component `c` as sent (escaped).
    pub fn sub_raw(&self, c: usize, s: usize) -> Option<&'a str> {
        let comp = self.component_raw(c)?;
        if self.literal {
            return (s == 1).then_some(comp);
        }
        nth_part(comp, self.shared.delimiters.subcomponent, s)
    }

    pub fn value(&self, c: usize, s: usize) -> Value<'a> {
        match self.sub_raw(c, s) {
            None => Value::Empty,
            Some("") => Value::Empty,
            Some(v) if self.literal => Value::Text(Cow::Borrowed(v)),
            Some(v) => leaf_value(v, self.shared),
        }
    }

    /// Subcomponent 1 of component `c`, unescaped; `""` when empty or null.
    pub fn component(&self, c: usize) -> String {
        self.value(c, 1).into_string()
    }

    /// Subcomponent `s` of component `c`, unescaped; `""` when empty or null.
    pub fn sub(&self, c: usize, s: usize) -> String {
        self.value(c, s).into_string()
    }
}

fn nth_part(text: &str, sep: char, n: usize) -> Option<&str> {
    text.split(sep).nth(n.checked_sub(1)?)
}

fn leaf_value<'a>(raw: &'a str, shared: &Shared) -> Value<'a> {
    if raw.is_empty() {
        Value::Empty
    } else if raw == HL7_NULL {
        Value::Null
    } else {
        Value::Text(unescape_with(raw, &shared.delimiters, shared.charset))
    }
}

/// One segment: its name and fields in HL7 numbering.
#[derive(Clone)]
pub struct Segment {
    shared: Arc<Shared>,
    start: usize,
    end: usize,
    fields: Vec<Field>,
}

impl Segment {
    pub fn name(&self) -> &str {
        self.shared.slice(self.start, self.start + 3)
    }

    /// The segment line as sent, without terminator.
    pub fn raw(&self) -> &str {
        self.shared.slice(self.start, self.end)
    }

    /// Field `n` (1-based HL7 numbering; for MSH/BHS/FHS field 1 is the
    /// field separator and field 2 the encoding characters).
    pub fn field(&self, n: usize) -> Option<&Field> {
        self.fields.get(n.checked_sub(1)?)
    }

    pub fn fields(&self) -> &[Field] {
        &self.fields
    }

    pub fn field_count(&self) -> usize {
        self.fields.len()
    }

    pub fn value(&self, n: usize, rep: usize, comp: usize, sub: usize) -> Value<'_> {
        self.field(n).map_or(Value::Empty, |f| f.value(rep, comp, sub))
    }

    /// Repetition 1, component 1, subcomponent 1 of field `n`, unescaped;
    /// `""` when absent, empty or null.
    pub fn text(&self, n: usize) -> String {
        self.value(n, 1, 1, 1).into_string()
    }

    /// Subcomponent 1 of component `c` in repetition 1 of field `n`.
    pub fn component(&self, n: usize, c: usize) -> String {
        self.value(n, 1, c, 1).into_string()
    }

    /// True when field `n` is exactly the HL7 null `""`.
    pub fn is_null(&self, n: usize) -> bool {
        self.field(n).is_some_and(Field::is_null)
    }
}

/// MSH values read on every message, decoded once at parse so the accessors
/// can hand out `&str` even when the sender escaped something.
#[derive(Debug, Clone, Default)]
struct Header {
    sending_application: String,
    sending_facility: String,
    receiving_application: String,
    receiving_facility: String,
    message_code: String,
    trigger_event: String,
    message_structure: String,
    control_id: String,
    processing_id: String,
    version: String,
    accept_ack_type: String,
    app_ack_type: String,
}

impl Header {
    fn from_msh(msh: &Segment) -> Self {
        let c = |n: usize, comp: usize| msh.component(n, comp);
        Self {
            sending_application: c(3, 1),
            sending_facility: c(4, 1),
            receiving_application: c(5, 1),
            receiving_facility: c(6, 1),
            message_code: c(9, 1),
            trigger_event: c(9, 2),
            message_structure: c(9, 3),
            control_id: c(10, 1),
            processing_id: c(11, 1),
            version: c(12, 1),
            accept_ack_type: c(15, 1),
            app_ack_type: c(16, 1),
        }
    }
}

/// A parsed HL7 v2 message. Cloning is cheap-ish: the text is shared.
#[derive(Clone)]
pub struct Message {
    shared: Arc<Shared>,
    segments: Vec<Segment>,
    header: Header,
}

impl Message {
    pub fn parse(bytes: &[u8]) -> Result<Message, Hl7Error> {
        Self::parse_with(bytes, &ParseLimits::default())
    }

    pub fn parse_with(bytes: &[u8], limits: &ParseLimits) -> Result<Message, Hl7Error> {
        let (base, body) = trim_input(bytes);
        let at = |kind: Hl7ErrorKind, field: Option<usize>, pos: usize| {
            let segment = (field.is_some() || kind == Hl7ErrorKind::NotMsh)
                .then(|| String::from_utf8_lossy(body.get(..3).unwrap_or(body)).into_owned());
            Hl7Error::new(
                kind,
                ErrorLocation { segment_index: segment.as_ref().map(|_| 1), segment, field, position: Some(pos) },
            )
        };
        if body.is_empty() {
            return Err(at(Hl7ErrorKind::Empty, None, base));
        }
        if body.len() > limits.max_message_bytes {
            return Err(at(Hl7ErrorKind::TooLarge(limits.max_message_bytes), None, base));
        }
        if !body.starts_with(b"MSH") {
            return Err(at(Hl7ErrorKind::NotMsh, None, base));
        }
        let delimiters = read_delimiters(body)
            .map_err(|p| at(Hl7ErrorKind::BadDelimiters(p.reason), Some(p.field), base + p.offset))?;

        let msh_line = first_line(body);
        let (charset_offset, declared) = declared_charset(msh_line, &delimiters);
        let wanted = if declared.is_empty() {
            None
        } else {
            let name = String::from_utf8_lossy(declared);
            match Charset::from_hl7_name(&name) {
                Some(c) => Some(c),
                None => {
                    return Err(at(
                        Hl7ErrorKind::UnsupportedCharset(name.into_owned()),
                        Some(18),
                        base + charset_offset,
                    ));
                }
            }
        };
        let (text, charset, widened) = decode(body, wanted).map_err(|bad| {
            let (index, name) = locate_line(body, bad);
            Hl7Error::new(
                Hl7ErrorKind::InvalidEncoding("utf-8".to_owned()),
                ErrorLocation { segment_index: Some(index), segment: name, field: None, position: Some(base + bad) },
            )
        })?;

        let shared = Arc::new(Shared { text, delimiters, charset, base, widened });
        let segments = split_segments(&shared, limits)?;
        let header = segments.first().map(Header::from_msh).unwrap_or_default();
        Ok(Message { shared, segments, header })
    }

    pub fn delimiters(&self) -> &Delimiters {
        &self.shared.delimiters
    }

    pub fn charset(&self) -> Charset {
        self.shared.charset
    }

    /// The decoded message text (BOM and surrounding whitespace removed),
    /// kept verbatim for audit.
    pub fn raw(&self) -> &str {
        &self.shared.text
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// First segment with this name.
    pub fn segment(&self, name: &str) -> Option<&Segment> {
        self.segments.iter().find(|s| s.name() == name)
    }

    pub fn segments_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Segment> + 'a {
        self.segments.iter().filter(move |s| s.name() == name)
    }

    /// The MSH segment (always present in a parsed message).
    pub fn msh(&self) -> Option<&Segment> {
        self.segments.first()
    }

    /// MSH-10.
    pub fn control_id(&self) -> &str {
        &self.header.control_id
    }

    /// MSH-9.1, MSH-9.2, MSH-9.3 (e.g. `ADT`, `A01`, `ADT_A01`).
    pub fn message_type(&self) -> (&str, &str, &str) {
        (&self.header.message_code, &self.header.trigger_event, &self.header.message_structure)
    }

    /// MSH-3.1.
    pub fn sending_application(&self) -> &str {
        &self.header.sending_application
    }

    /// MSH-4.1.
    pub fn sending_facility(&self) -> &str {
        &self.header.sending_facility
    }

    /// MSH-5.1.
    pub fn receiving_application(&self) -> &str {
        &self.header.receiving_application
    }

    /// MSH-6.1.
    pub fn receiving_facility(&self) -> &str {
        &self.header.receiving_facility
    }

    /// MSH-11.1.
    pub fn processing_id(&self) -> &str {
        &self.header.processing_id
    }

    /// MSH-12.1.
    pub fn version(&self) -> &str {
        &self.header.version
    }

    /// MSH-15 (AL, NE, ER, SU or empty).
    pub fn accept_ack_type(&self) -> &str {
        &self.header.accept_ack_type
    }

    /// MSH-16 (AL, NE, ER, SU or empty).
    pub fn app_ack_type(&self) -> &str {
        &self.header.app_ack_type
    }

    /// First missing required MSH field (MSH-9.1, MSH-10, MSH-12), so the
    /// caller can NAK with 101 and point ERR-2 at it.
    pub fn validate_header(&self) -> Result<(), Hl7Error> {
        match self.header_problems().into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Every missing required MSH field, one error each (one ERR segment each).
    pub fn header_problems(&self) -> Vec<Hl7Error> {
        let h = &self.header;
        let checks = [(9, h.message_code.is_empty()), (10, h.control_id.is_empty()), (12, h.version.is_empty())];
        let Some(msh) = self.segments.first() else {
            return Vec::new();
        };
        checks
            .into_iter()
            .filter(|&(_, missing)| missing)
            .map(|(n, _)| {
                let text_pos = msh.field(n).map_or(msh.end, |f| f.start);
                Hl7Error::new(
                    Hl7ErrorKind::MissingField,
                    ErrorLocation {
                        segment_index: Some(1),
                        segment: Some(msh.name().to_owned()),
                        field: Some(n),
                        position: Some(self.shared.input_pos(text_pos)),
                    },
                )
            })
            .collect()
    }
}

// Manual Debug impls print each span once; derived ones would print the
// shared message text for every field, which is quadratic in log output.
impl fmt::Debug for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Field").field(&self.raw()).finish()
    }
}

impl fmt::Debug for Repetition<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Repetition").field(&self.raw).finish()
    }
}

impl fmt::Debug for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Segment").field(&self.raw()).finish()
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("delimiters", &self.shared.delimiters)
            .field("charset", &self.shared.charset)
            .field("segments", &self.segments)
            .finish()
    }
}

/// Skips what MLLP peers and file drops put around a message: a UTF-8 BOM,
/// whitespace, stray VT/FS framing bytes and NUL padding.
pub(crate) fn trim_input(bytes: &[u8]) -> (usize, &[u8]) {
    let padding = |b: u8| b.is_ascii_whitespace() || b == 0x0B || b == 0x1C || b == 0;
    let mut s = bytes;
    let mut base = 0;
    loop {
        if let Some(rest) = s.strip_prefix(BOM) {
            base += BOM.len();
            s = rest;
            continue;
        }
        match s.split_first() {
            Some((&b, rest)) if padding(b) => {
                base += 1;
                s = rest;
            }
            _ => break,
        }
    }
    while let Some((&b, rest)) = s.split_last() {
        if !padding(b) {
            break;
        }
        s = rest;
    }
    (base, s)
}

pub(crate) fn first_line(body: &[u8]) -> &[u8] {
    body.split(|&b| b == b'\r' || b == b'\n').next().unwrap_or(body)
}

pub(crate) struct DelimiterProblem {
    pub(crate) reason: String,
    pub(crate) field: usize,
    pub(crate) offset: usize,
}

fn describe_byte(b: u8) -> String {
    if b.is_ascii_graphic() { format!("'{}'", char::from(b)) } else { format!("0x{b:02x}") }
}

/// Reads MSH-1/MSH-2 from raw bytes, before the charset is known; legal
/// delimiters are ASCII so this is safe for every supported charset.
pub(crate) fn read_delimiters(body: &[u8]) -> Result<Delimiters, DelimiterProblem> {
    let problem = |reason: String, field: usize, offset: usize| DelimiterProblem { reason, field, offset };
    let Some(&fs) = body.get(3) else {
        return Err(problem("message ends before msh-1".to_owned(), 1, body.len()));
    };
    if !is_legal_delimiter(char::from(fs)) {
        return Err(problem(format!("field separator {} is not a legal delimiter", describe_byte(fs)), 1, 3));
    }
    let after = body.get(4..).unwrap_or_default();
    let len = after.iter().position(|&b| b == fs || b == b'\r' || b == b'\n').unwrap_or(after.len());
    let enc = after.get(..len).unwrap_or_default();
    if enc.is_empty() {
        return Err(problem("msh-2 encoding characters are missing".to_owned(), 2, 4));
    }
    if enc.len() > 5 {
        return Err(problem(format!("msh-2 has {} encoding characters, at most 5 are allowed", enc.len()), 2, 4));
    }
    let mut seen = vec![fs];
    for (i, &b) in enc.iter().enumerate() {
        if !is_legal_delimiter(char::from(b)) {
            return Err(problem(format!("encoding character {} is not a legal delimiter", describe_byte(b)), 2, 4 + i));
        }
        if seen.contains(&b) {
            return Err(problem(format!("delimiter {} is used twice", describe_byte(b)), 2, 4 + i));
        }
        seen.push(b);
    }
    let ch = |i: usize| enc.get(i).map(|&b| char::from(b));
    let field = char::from(fs);
    let component = ch(0).unwrap_or('^');
    Ok(Delimiters {
        field,
        component,
        repetition: ch(1).unwrap_or(field),
        escape: ch(2).unwrap_or(field),
        subcomponent: ch(3).unwrap_or(component),
        truncation: ch(4),
    })
}

/// Byte range of MSH-`n` (n >= 2) in the raw MSH line.
pub(crate) fn msh_field_bytes(line: &[u8], fs: u8, n: usize) -> Option<(usize, &[u8])> {
    let index = n.checked_sub(1)?;
    let mut start = 0;
    for (i, part) in line.split(|&b| b == fs).enumerate() {
        if i == index {
            return Some((start, part));
        }
        start += part.len() + 1;
    }
    None
}

/// First component of the first repetition of a raw field, trimmed.
pub(crate) fn first_component_bytes<'a>(field: &'a [u8], d: &Delimiters) -> &'a [u8] {
    let rep = ascii_byte(d.repetition);
    let comp = ascii_byte(d.component);
    let field = if d.has_repetition() { field.split(|&b| b == rep).next().unwrap_or(field) } else { field };
    field.split(|&b| b == comp).next().unwrap_or(field).trim_ascii()
}

fn ascii_byte(c: char) -> u8 {
    u8::try_from(c).unwrap_or(0)
}

/// MSH-18 has to be read from raw bytes because it decides how to decode them.
fn declared_charset<'a>(msh_line: &'a [u8], d: &Delimiters) -> (usize, &'a [u8]) {
    match msh_field_bytes(msh_line, ascii_byte(d.field), 18) {
        Some((offset, raw)) => (offset, first_component_bytes(raw, d)),
        None => (msh_line.len(), &[]),
    }
}

/// Decodes the whole message. Returns the text, the effective charset and
/// whether byte offsets changed (Latin-1 widening), or the offset of the
/// first invalid byte when UTF-8 was declared.
fn decode(body: &[u8], wanted: Option<Charset>) -> Result<(String, Charset, bool), usize> {
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

/// Segment index and name of the raw line containing `pos`, for error reports
/// raised before the text exists.
fn locate_line(body: &[u8], pos: usize) -> (usize, Option<String>) {
    let mut index = 0;
    let mut name = None;
    let mut start = 0;
    for line in body.split(|&b| b == b'\r' || b == b'\n') {
        if start > pos {
            break;
        }
        let content = line.trim_ascii_start();
        if !content.is_empty() {
            index += 1;
            name = Some(String::from_utf8_lossy(content.get(..3).unwrap_or(content)).into_owned());
        }
        start += line.len() + 1;
    }
    (index.max(1), name)
}

fn split_segments(shared: &Arc<Shared>, limits: &ParseLimits) -> Result<Vec<Segment>, Hl7Error> {
    let bytes = shared.text.as_bytes();
    let mut segments: Vec<Segment> = Vec::new();
    let mut line_start = 0;
    while line_start < bytes.len() {
        let rest = bytes.get(line_start..).unwrap_or_default();
        let len = rest.iter().position(|&b| b == b'\r' || b == b'\n').unwrap_or(rest.len());
        let line = rest.get(..len).unwrap_or_default();
        // Leading blanks are never part of a segment name (delimiters cannot be
        // blank), so dropping them is safe and forgives sloppy senders.
        let indent = line.iter().take_while(|&&b| b == b' ' || b == b'\t').count();
        let content = line.get(indent..).unwrap_or_default();
        if !content.iter().all(u8::is_ascii_whitespace) {
            let index = segments.len() + 1;
            if index > limits.max_segments {
                return Err(Hl7Error::new(
                    Hl7ErrorKind::TooManySegments(limits.max_segments),
                    ErrorLocation {
                        segment_index: Some(index),
                        segment: content.get(..3).map(|n| String::from_utf8_lossy(n).into_owned()),
                        field: None,
                        position: Some(shared.input_pos(line_start + indent)),
                    },
                ));
            }
            segments.push(parse_segment(shared, line_start + indent, content, index, limits)?);
        }
        line_start += len + 1;
    }
    Ok(segments)
}

fn is_segment_name(line: &[u8], fs: u8) -> bool {
    let upper_or_digit = |b: &u8| b.is_ascii_uppercase() || b.is_ascii_digit();
    let name_ok = matches!(line, [a, b, c, ..] if a.is_ascii_uppercase() && upper_or_digit(b) && upper_or_digit(c));
    name_ok && line.get(3).is_none_or(|&b| b == fs)
}

fn parse_segment(
    shared: &Arc<Shared>,
    start: usize,
    line: &[u8],
    index: usize,
    limits: &ParseLimits,
) -> Result<Segment, Hl7Error> {
    let d = &shared.delimiters;
    let fs = ascii_byte(d.field);
    let rep = ascii_byte(d.repetition);
    let error = |kind: Hl7ErrorKind, field: Option<usize>, offset: usize, name: String| {
        Hl7Error::new(
            kind,
            ErrorLocation {
                segment_index: Some(index),
                segment: Some(name),
                field,
                position: Some(shared.input_pos(start + offset)),
            },
        )
    };
    if !is_segment_name(line, fs) {
        let seen = line.split(|&b| b == fs).next().unwrap_or_default();
        let seen: String = String::from_utf8_lossy(seen).chars().take(16).collect();
        return Err(error(Hl7ErrorKind::InvalidSegmentName(seen.clone()), None, 0, seen));
    }
    let name = || shared.slice(start, start + 3).to_owned();
    let header_style = matches!(line.get(..3), Some(b"MSH" | b"BHS" | b"FHS"));
    let field = |from: usize, to: usize, literal: bool| Field {
        shared: Arc::clone(shared),
        start: start + from,
        end: start + to,
        literal,
    };

    // One cheap counting pass avoids repeated reallocation while pushing.
    let separators = line.iter().filter(|&&b| b == fs).count();
    let mut fields: Vec<Field> = Vec::with_capacity((separators + 1).min(limits.max_fields_per_segment));
    let mut next = None;
    if line.len() > 3 {
        if header_style {
            fields.push(field(3, 4, true));
            let after = line.get(4..).unwrap_or_default();
            let enc_len = after.iter().position(|&b| b == fs).unwrap_or(after.len());
            fields.push(field(4, 4 + enc_len, true));
            if 4 + enc_len < line.len() {
                next = Some(4 + enc_len + 1);
            }
        } else {
            next = Some(4);
        }
    }
    if let Some(mut from) = next {
        let mut reps = 1usize;
        let push = |fields: &mut Vec<Field>, from: usize, to: usize, reps: usize| {
            let number = fields.len() + 1;
            if number > limits.max_fields_per_segment {
                return Err(error(
                    Hl7ErrorKind::TooManyFields(limits.max_fields_per_segment),
                    Some(number),
                    from,
                    name(),
                ));
            }
            if reps > limits.max_repetitions {
                return Err(error(
                    Hl7ErrorKind::TooManyRepetitions(limits.max_repetitions),
                    Some(number),
                    from,
                    name(),
                ));
            }
            fields.push(field(from, to, false));
            Ok(())
        };
        for (i, &b) in line.iter().enumerate().skip(from) {
            if b == fs {
                push(&mut fields, from, i, reps)?;
                from = i + 1;
                reps = 1;
            } else if b == rep {
                reps += 1;
            }
        }
        push(&mut fields, from, line.len(), reps)?;
    }
    Ok(Segment { shared: Arc::clone(shared), start, end: start + line.len(), fields })
}

/// Decodes HL7 escape sequences assuming a UTF-8 message (see `unescape_with`).
pub fn unescape<'a>(text: &'a str, d: &Delimiters) -> Cow<'a, str> {
    unescape_with(text, d, Charset::Utf8)
}

/// Decodes HL7 escape sequences in one leaf value.
///
/// - `\F\ \S\ \T\ \R\ \E\` become the delimiters, `\P\` the truncation char
///   (kept literally when none is declared).
/// - `\Xhh..\` is decoded as bytes of `charset`; bytes that are not valid
///   UTF-8 in a UTF-8/ASCII message are read as Latin-1 so nothing is lost.
///   Odd-length or non-hex content is kept literally.
/// - `\.br\` becomes `"\n"`; `\.sp\` one newline and `\.sp N\` N newlines
///   (at least 1, at most 64): Vigil stores text, not layout, so line breaks are
///   the only formatting worth keeping.
/// - `\H\ \N\ \.in\ \.ti\ \.sk\ \.ce\ \.fi\ \.nf\` (highlighting/layout) and
///   `\Cxxyy\ \Mxxyyzz\` (charset switches, which only matter for ISO 2022
///   sets we do not accept) are dropped.
/// - Unknown sequences and an unterminated escape are kept literally.
pub fn unescape_with<'a>(text: &'a str, d: &Delimiters, charset: Charset) -> Cow<'a, str> {
    if !d.has_escape() || !text.contains(d.escape) {
        return Cow::Borrowed(text);
    }
    let esc = d.escape;
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some((before, after)) = rest.split_once(esc) {
        out.push_str(before);
        match after.split_once(esc) {
            Some((seq, tail)) => {
                if !decode_sequence(seq, d, charset, &mut out) {
                    out.push(esc);
                    out.push_str(seq);
                    out.push(esc);
                }
                rest = tail;
            }
            None => {
                out.push(esc);
                rest = after;
                break;
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Appends the meaning of one escape sequence; false when it is not a
/// sequence we recognise (the caller then keeps it literally).
fn decode_sequence(seq: &str, d: &Delimiters, charset: Charset, out: &mut String) -> bool {
    let all_hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    match seq {
        "F" => out.push(d.field),
        "S" => out.push(d.component),
        "T" => out.push(d.subcomponent),
        "R" => out.push(d.repetition),
        "E" => out.push(d.escape),
        "P" => match d.truncation {
            Some(t) => out.push(t),
            None => return false,
        },
        "H" | "N" => {}
        _ => {
            if let Some(hex) = seq.strip_prefix('X') {
                return decode_hex(hex, charset, out);
            }
            if let Some(code) = seq.strip_prefix('C') {
                return code.len() == 4 && all_hex(code);
            }
            if let Some(code) = seq.strip_prefix('M') {
                return (code.len() == 4 || code.len() == 6) && all_hex(code);
            }
            if let Some(cmd) = seq.strip_prefix('.') {
                return decode_formatting(cmd, out);
            }
            return false;
        }
    }
    true
}

fn decode_hex(hex: &str, charset: Charset, out: &mut String) -> bool {
    if hex.is_empty() || !hex.len().is_multiple_of(2) {
        return false;
    }
    let mut bytes = Vec::with_capacity(hex.len() / 2);
    for pair in hex.as_bytes().chunks_exact(2) {
        let Some(b) = std::str::from_utf8(pair).ok().and_then(|p| u8::from_str_radix(p, 16).ok()) else {
            return false;
        };
        bytes.push(b);
    }
    match charset {
        Charset::Latin1 => out.push_str(&latin1(&bytes)),
        Charset::Utf8 | Charset::Ascii => out.push_str(&decode_auto(&bytes)),
    }
    true
}

fn decode_formatting(cmd: &str, out: &mut String) -> bool {
    let (name, arg) = match (cmd.get(..2), cmd.get(2..)) {
        (Some(n), Some(a)) => (n, a.trim()),
        _ => return false,
    };
    let digits = arg.strip_prefix(['+', '-']).unwrap_or(arg);
    let arg_ok = arg.is_empty() || (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()));
    if !arg_ok {
        return false;
    }
    match name {
        "br" if arg.is_empty() => out.push('\n'),
        "sp" => {
            // Only overflow can make an all-digit argument fail to parse.
            let n = if digits.is_empty() { 1 } else { digits.parse::<usize>().unwrap_or(MAX_SP_LINES) };
            let n = n.clamp(1, MAX_SP_LINES);
            out.extend(std::iter::repeat_n('\n', n));
        }
        "in" | "ti" | "sk" => {}
        "ce" | "fi" | "nf" if arg.is_empty() => {}
        _ => return false,
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADT: &str = "MSH|^~\\&|EPIC|CITYHOSP|VIGIL|VIGILFAC|20240102030405+0000||ADT^A01^ADT_A01|MSG00001|P|2.5.1|||AL|NE||UNICODE UTF-8\r\
EVN|A01|20240102030405\r\
PID|1||123^^^HOSP^MR~456^^^HOSP^PI~789^^^SSA^SS||DOE^JOHN^Q^JR||19800101|M|\"\"||1 MAIN ST^APT 2&FLOOR 3^SPRINGFIELD^IL^62701||555-1234~555-9999\r\
PV1|1|I|W1^101^A\r\
ZVG|1|custom^data\r";

    fn msg(s: &str) -> Message {
        Message::parse(s.as_bytes()).expect("test message parses")
    }

    fn err(s: &[u8]) -> Hl7Error {
        Message::parse(s).expect_err("test message must fail")
    }

    #[test]
    fn parses_header_accessors() {
        let m = msg(ADT);
        assert_eq!(m.segments().len(), 5);
        assert_eq!(m.control_id(), "MSG00001");
        assert_eq!(m.message_type(), ("ADT", "A01", "ADT_A01"));
        assert_eq!(m.sending_application(), "EPIC");
        assert_eq!(m.sending_facility(), "CITYHOSP");
        assert_eq!(m.receiving_application(), "VIGIL");
        assert_eq!(m.version(), "2.5.1");
        assert_eq!(m.processing_id(), "P");
        assert_eq!(m.accept_ack_type(), "AL");
        assert_eq!(m.app_ack_type(), "NE");
        assert_eq!(m.charset(), Charset::Utf8);
        assert_eq!(*m.delimiters(), Delimiters::default());
        assert!(m.validate_header().is_ok());
        assert_eq!(m.raw(), ADT.trim_end());
    }

    #[test]
    fn msh_numbering_keeps_delimiter_fields_literal() {
        let m = msg(ADT);
        let msh = m.segment("MSH").expect("msh");
        assert_eq!(msh.text(1), "|");
        assert_eq!(msh.text(2), "^~\\&");
        assert_eq!(msh.field(2).map(Field::repetition_count), Some(1));
        assert_eq!(msh.value(2, 1, 2, 1), Value::Empty);
        assert_eq!(msh.text(3), "EPIC");
        assert_eq!(msh.component(9, 2), "A01");
        assert_eq!(msh.field_count(), 18);
        let pid = m.segment("PID").expect("pid");
        assert_eq!(pid.text(1), "1");
        assert_eq!(pid.component(5, 2), "JOHN");
    }

    #[test]
    fn repetitions_find_mr_identifier() {
        let m = msg(ADT);
        let pid3 = m.segment("PID").and_then(|p| p.field(3)).expect("pid-3");
        assert_eq!(pid3.repetition_count(), 3);
        let mr: Vec<String> = pid3.repetitions().filter(|r| r.component(5) == "MR").map(|r| r.component(1)).collect();
        assert_eq!(mr, vec!["123"]);
        let types: Vec<String> = pid3.repetitions().map(|r| r.component(5)).collect();
        assert_eq!(types, ["MR", "PI", "SS"]);
        assert_eq!(pid3.repetition(3).map(|r| r.component(4)), Some("SSA".to_owned()));
        assert!(pid3.repetition(4).is_none());
        assert!(pid3.repetition(0).is_none());
        let phones = m.segment("PID").and_then(|p| p.field(13)).expect("pid-13");
        assert_eq!(phones.value(2, 1, 1), Value::Text(Cow::Borrowed("555-9999")));
    }

    #[test]
    fn subcomponents() {
        let m = msg(ADT);
        let pid = m.segment("PID").expect("pid");
        let addr = pid.field(11).and_then(|f| f.repetition(1)).expect("pid-11");
        assert_eq!(addr.component(2), "APT 2");
        assert_eq!(addr.sub(2, 2), "FLOOR 3");
        assert_eq!(addr.sub(2, 3), "");
        assert_eq!(addr.component_raw(2), Some("APT 2&FLOOR 3"));
        assert_eq!(pid.value(11, 1, 2, 2).as_str(), "FLOOR 3");
    }

    #[test]
    fn null_versus_empty() {
        let m = msg("MSH|^~\\&|A|B|C|D|||ADT^A01|1|P|2.5\rPID|1||\"\"||x^\"\"^|\"\"&y\r");
        let pid = m.segment("PID").expect("pid");
        assert_eq!(pid.value(3, 1, 1, 1), Value::Null);
        assert!(pid.is_null(3));
        assert_eq!(pid.text(3), "");
        assert_eq!(pid.value(2, 1, 1, 1), Value::Empty);
        assert!(!pid.is_null(2));
        assert_eq!(pid.value(99, 1, 1, 1), Value::Empty);
        assert_eq!(pid.value(5, 1, 2, 1), Value::Null);
        assert_eq!(pid.value(5, 1, 3, 1), Value::Empty);
        assert_eq!(pid.value(5, 1, 4, 1), Value::Empty);
        assert!(!pid.is_null(5));
        assert_eq!(pid.value(6, 1, 1, 1), Value::Null);
        assert_eq!(pid.value(6, 1, 1, 2).as_str(), "y");
        assert_eq!(pid.field(2).map(Field::repetition_count), Some(0));
    }

    #[test]
    fn every_escape_sequence() {
        let d = Delimiters { truncation: Some('#'), ..Delimiters::default() };
        let cases: &[(&str, &str)] = &[
            ("a\\F\\b", "a|b"),
            ("\\S\\", "^"),
            ("\\T\\", "&"),
            ("\\R\\", "~"),
            ("\\E\\", "\\"),
            ("\\P\\", "#"),
            ("\\X41\\", "A"),
            ("\\X0D0A\\", "\r\n"),
            ("\\XC3A9\\", "é"),
            ("\\XE9\\", "é"),
            ("\\XZZ\\", "\\XZZ\\"),
            ("\\X414\\", "\\X414\\"),
            ("\\X\\", "\\X\\"),
            ("l1\\.br\\l2", "l1\nl2"),
            ("\\.sp\\", "\n"),
            ("\\.sp 3\\", "\n\n\n"),
            ("\\.sp 999999999999999999999\\", &"\n".repeat(MAX_SP_LINES)),
            ("\\H\\bold\\N\\", "bold"),
            ("\\.in +4\\x\\.ti -2\\\\.sk 1\\\\.ce\\\\.fi\\\\.nf\\", "x"),
            ("\\C2842\\a\\M2442\\b\\M244228\\", "ab"),
            ("\\C28\\", "\\C28\\"),
            ("\\Q\\", "\\Q\\"),
            ("\\.zz\\", "\\.zz\\"),
            ("\\.br 2\\", "\\.br 2\\"),
            ("tail\\F", "tail\\F"),
            ("\\", "\\"),
            ("\\\\", "\\\\"),
            ("plain", "plain"),
        ];
        for (input, expected) in cases {
            assert_eq!(unescape(input, &d), *expected, "input {input:?}");
        }
        assert_eq!(unescape("\\P\\", &Delimiters::default()), "\\P\\");
        assert_eq!(unescape_with("\\XE9\\", &d, Charset::Latin1), "é");
        assert_eq!(unescape_with("\\XC3A9\\", &d, Charset::Latin1), "Ã©");
        assert!(matches!(unescape("no escapes", &d), Cow::Borrowed(_)));
    }

    #[test]
    fn escapes_decoded_through_accessors_but_raw_kept() {
        let m = msg("MSH|^~\\&|A|B|C|D|||ORU^R01|1|P|2.5\rOBX|1|TX|||line1\\.br\\a\\F\\b\\S\\c\r");
        let obx = m.segment("OBX").expect("obx");
        assert_eq!(obx.text(5), "line1\na|b^c");
        assert_eq!(obx.field(5).map(Field::raw), Some("line1\\.br\\a\\F\\b\\S\\c"));
    }

    #[test]
    fn odd_delimiter_set() {
        let m = msg(
            "MSH#@*$%#APP@X#FAC#RCV#RF#20240101##ADT@A08#C$F$1#P#2.4\rPID#1##111@@@H@MR*222@@@H@PI##DOE@JANE%M##$S$$E$\r",
        );
        let d = m.delimiters();
        assert_eq!((d.field, d.component, d.repetition, d.escape, d.subcomponent), ('#', '@', '*', '$', '%'));
        assert_eq!(m.control_id(), "C#1");
        assert_eq!(m.sending_application(), "APP");
        assert_eq!(m.message_type(), ("ADT", "A08", ""));
        let pid = m.segment("PID").expect("pid");
        assert_eq!(pid.field(3).map(Field::repetition_count), Some(2));
        assert_eq!(pid.value(3, 2, 5, 1).as_str(), "PI");
        assert_eq!(pid.value(5, 1, 2, 2).as_str(), "M");
        assert_eq!(pid.text(7), "@$");
        let msh = m.msh().expect("msh");
        assert_eq!(msh.text(1), "#");
        assert_eq!(msh.text(2), "@*$%");
    }

    #[test]
    fn missing_optional_encoding_characters() {
        let m = msg("MSH|^~|A|B|C|D|||ADT^A01|1|P|2.3\rPID|1||a&b\\F\\c~d\r");
        let d = *m.delimiters();
        assert!(!d.has_escape() && !d.has_subcomponent() && d.has_repetition());
        assert_eq!(d.encoding_characters(), "^~");
        let pid = m.segment("PID").expect("pid");
        assert_eq!(pid.text(3), "a&b\\F\\c");
        assert_eq!(pid.value(3, 2, 1, 1).as_str(), "d");

        let m = msg("MSH|^|A|B|C|D|||ADT^A01|1|P|2.3\rPID|1||a~b\r");
        assert_eq!(m.segment("PID").map(|p| p.text(3)), Some("a~b".to_owned()));

        let m = msg("MSH|^~\\&#|A|B|C|D|||ADT^A01|1|P|2.7\rNTE|1||cut\\P\\\r");
        assert_eq!(m.delimiters().truncation, Some('#'));
        assert_eq!(m.delimiters().encoding_characters(), "^~\\&#");
        assert_eq!(m.segment("NTE").map(|s| s.text(3)), Some("cut#".to_owned()));
    }

    #[test]
    fn terminators_and_whitespace() {
        let variants = [
            ADT.replace('\r', "\n"),
            ADT.replace('\r', "\r\n"),
            format!("\u{feff}  \r\n{}\r\n\r\n  \n\x1c\r", ADT.replace('\r', "\r\n\r\n")),
            format!("\x0b{ADT}\x1c\r"),
        ];
        for v in &variants {
            let m = msg(v);
            let names: Vec<&str> = m.segments().iter().map(Segment::name).collect();
            assert_eq!(names, ["MSH", "EVN", "PID", "PV1", "ZVG"], "variant {v:?}");
            assert_eq!(m.segment("ZVG").map(|z| z.component(2, 2)), Some("data".to_owned()));
        }
    }

    #[test]
    fn latin1_declared() {
        let mut bytes = b"MSH|^~\\&|A|B|C|D|||ADT^A01|1|P|2.5||||||8859/1\rPID|1||||M".to_vec();
        bytes.push(0xFC);
        bytes.extend_from_slice(b"LLER^J\xD6RG\rZZZ|\\XE9\\\r");
        let m = Message::parse(&bytes).expect("latin-1 parses");
        assert_eq!(m.charset(), Charset::Latin1);
        let pid = m.segment("PID").expect("pid");
        assert_eq!(pid.text(5), "MüLLER");
        assert_eq!(pid.component(5, 2), "JÖRG");
        assert_eq!(m.segment("ZZZ").map(|z| z.text(1)), Some("é".to_owned()));
        assert_eq!(Charset::Latin1.encode("MüLLER€").as_ref(), b"M\xFCLLER?");
    }

    #[test]
    fn latin1_error_positions_are_input_offsets() {
        let mut bytes = b"MSH|^~\\&|A|B|C|D|||ADT^A01|1|P|2.5||||||8859/1\rPID|\xE9\xE9\rpid|1\r".to_vec();
        let e = Message::parse(&bytes).expect_err("lowercase segment");
        let pos = bytes.iter().position(|&b| b == b'p').expect("pid line");
        assert_eq!(e.location.position, Some(pos));
        bytes.clear();
    }

    #[test]
    fn utf8_declared_and_detected() {
        let m = msg("MSH|^~\\&|A|B|C|D|||ADT^A01|1|P|2.5||||||UNICODE UTF-8\rPID|1||||Ōtsuka^Zoë\r");
        assert_eq!(m.segment("PID").map(|p| p.text(5)), Some("Ōtsuka".to_owned()));
        let m = msg("MSH|^~\\&|A|B|C|D|||ADT^A01|1|P|2.5\rPID|1||||Ōtsuka^Zoë\r");
        assert_eq!(m.charset(), Charset::Utf8);
        assert_eq!(m.segment("PID").map(|p| p.component(5, 2)), Some("Zoë".to_owned()));
        let m = Message::parse(b"MSH|^~\\&|A|B|C|D|||ADT^A01|1|P|2.5\rPID|1||||Zo\xEB\r").expect("fallback");
        assert_eq!(m.charset(), Charset::Latin1);
        assert_eq!(m.segment("PID").map(|p| p.text(5)), Some("Zoë".to_owned()));
        let m = Message::parse(b"MSH|^~\\&|A|B|C|D|||ADT^A01|1|P|2.5||||||ASCII\rPID|1||||Zo\xEB\r").expect("ascii");
        assert_eq!(m.charset(), Charset::Ascii);
        assert_eq!(m.segment("PID").map(|p| p.text(5)), Some("Zoë".to_owned()));
    }

    #[test]
    fn charset_errors() {
        let e = err(b"MSH|^~\\&|A|B|C|D|||ADT^A01|1|P|2.5||||||UNICODE UTF-8\rPID|1||||Zo\xEB\r");
        assert_eq!(e.kind, Hl7ErrorKind::InvalidEncoding("utf-8".to_owned()));
        assert_eq!(e.location.segment_index, Some(2));
        assert_eq!(e.location.segment.as_deref(), Some("PID"));
        assert_eq!(e.location.position, Some(65));
        assert_eq!(e.kind.ack_code(), 102);

        let e = err(b"MSH|^~\\&|A|B|C|D|||ADT^A01|1|P|2.5||||||8859/7\rPID|1\r");
        assert_eq!(e.kind, Hl7ErrorKind::UnsupportedCharset("8859/7".to_owned()));
        assert_eq!(e.location.field, Some(18));
        assert_eq!(e.location.position, Some(40));
        assert_eq!(e.kind.ack_code(), 203);
        assert_eq!(e.to_string(), "unsupported character set \"8859/7\" at segment 1 (MSH), field 18, byte 40");
        let m = msg("MSH|^~\\&|A|B|C|D|||ADT^A01|1|P|2.5||||||utf-8~8859/1\rPID|1\r");
        assert_eq!(m.charset(), Charset::Utf8);
    }

    #[test]
    fn structural_errors_with_location() {
        assert_eq!(err(b"").kind, Hl7ErrorKind::Empty);
        assert_eq!(err(b" \r\n\x0b\x1c ").kind, Hl7ErrorKind::Empty);
        let e = err(b"  PID|1|x\r");
        assert_eq!(e.kind, Hl7ErrorKind::NotMsh);
        assert_eq!(e.location.position, Some(2));
        assert_eq!(e.to_string(), "message does not start with an MSH segment at segment 1 (PID), byte 2");
        assert!(matches!(err(b"MSH").kind, Hl7ErrorKind::BadDelimiters(_)));
        assert!(matches!(err(b"MSHA^~\\&").kind, Hl7ErrorKind::BadDelimiters(_)));
        assert!(matches!(err(b"MSH||A").kind, Hl7ErrorKind::BadDelimiters(_)));
        let e = err(b"MSH|^~^&|A");
        assert!(matches!(e.kind, Hl7ErrorKind::BadDelimiters(_)));
        assert_eq!((e.location.field, e.location.position), (Some(2), Some(6)));
        assert!(matches!(err(b"MSH|^~\\&#!|").kind, Hl7ErrorKind::BadDelimiters(_)));
        assert!(matches!(err(b"MSH|^~\\ |").kind, Hl7ErrorKind::BadDelimiters(_)));
        assert!(matches!(err(b"MSH\"^~\\&").kind, Hl7ErrorKind::BadDelimiters(_)));

        let e = err(b"MSH|^~\\&|A\rPID|1\rpv1|x\r");
        assert_eq!(e.kind, Hl7ErrorKind::InvalidSegmentName("pv1".to_owned()));
        assert_eq!(e.location.segment_index, Some(3));
        assert_eq!(e.location.position, Some(17));
        assert_eq!(err(b"MSH|^~\\&|A\rPI|1\r").kind, Hl7ErrorKind::InvalidSegmentName("PI".to_owned()));
        assert_eq!(err(b"MSH|^~\\&|A\r1PD|1\r").kind, Hl7ErrorKind::InvalidSegmentName("1PD".to_owned()));
        assert_eq!(err(b"MSH|^~\\&|A\rPIDX|1\r").kind, Hl7ErrorKind::InvalidSegmentName("PIDX".to_owned()));
        assert_eq!(err(b"MSH|^~\\&|A\r\xff\xfe\r").kind, Hl7ErrorKind::InvalidSegmentName("ÿþ".to_owned()));
        assert!(Message::parse(b"MSH|^~\\&|A\rP1D|1\rZZZ\r").is_ok());
    }

    #[test]
    fn truncated_message_parses_but_fails_header_validation() {
        let m = msg("MSH|^~\\&|A|B|C|D|||ADT");
        assert_eq!(m.message_type(), ("ADT", "", ""));
        let problems = m.header_problems();
        let fields: Vec<Option<usize>> = problems.iter().map(|e| e.location.field).collect();
        assert_eq!(fields, [Some(10), Some(12)]);
        assert!(problems.iter().all(|e| e.kind == Hl7ErrorKind::MissingField && e.kind.ack_code() == 101));
        assert_eq!(m.validate_header().map_err(|e| e.location.field), Err(Some(10)));

        let m = msg("MSH|^~\\&|A|B|C|D|||\"\"|\"\"|P|");
        let fields: Vec<Option<usize>> = m.header_problems().iter().map(|e| e.location.field).collect();
        assert_eq!(fields, [Some(9), Some(10), Some(12)]);
        assert_eq!(m.header_problems().first().and_then(|e| e.location.position), Some(19));
    }

    #[test]
    fn limits_are_errors() {
        let limits =
            ParseLimits { max_segments: 2, max_fields_per_segment: 3, max_repetitions: 2, max_message_bytes: 200 };
        let e = Message::parse_with(b"MSH|^~\\&\rPID|1\rPV1|1\r", &limits).expect_err("segments");
        assert_eq!(e.kind, Hl7ErrorKind::TooManySegments(2));
        assert_eq!((e.location.segment_index, e.location.position), (Some(3), Some(15)));
        let e = Message::parse_with(b"MSH|^~\\&\rPID|1|2|3|4\r", &limits).expect_err("fields");
        assert_eq!(e.kind, Hl7ErrorKind::TooManyFields(3));
        assert_eq!((e.location.segment.as_deref(), e.location.field), (Some("PID"), Some(4)));
        let e = Message::parse_with(b"MSH|^~\\&\rPID|1|a~b~c\r", &limits).expect_err("reps");
        assert_eq!(e.kind, Hl7ErrorKind::TooManyRepetitions(2));
        assert_eq!(e.location.field, Some(2));
        assert!(Message::parse_with(b"MSH|^~\\&\rPID|1|a~b\r", &limits).is_ok());
        let big = format!("MSH|^~\\&|{}", "x".repeat(300));
        assert_eq!(
            Message::parse_with(big.as_bytes(), &limits).map(|_| ()).map_err(|e| e.kind),
            Err(Hl7ErrorKind::TooLarge(200))
        );

        let many = format!("MSH|^~\\&\r{}", "NTE|1\r".repeat(10_001));
        assert_eq!(err(many.as_bytes()).kind, Hl7ErrorKind::TooManySegments(10_000));
        let wide = format!("MSH|^~\\&\rNTE{}", "|".repeat(1_001));
        assert_eq!(err(wide.as_bytes()).kind, Hl7ErrorKind::TooManyFields(1_000));
        let reps = format!("MSH|^~\\&\rNTE|{}", "~".repeat(1_000));
        assert_eq!(err(reps.as_bytes()).kind, Hl7ErrorKind::TooManyRepetitions(1_000));
    }

    #[test]
    fn segments_named_and_z_segments() {
        let m = msg("MSH|^~\\&|A|B|C|D|||ORU^R01|1|P|2.5\rOBX|1|NM|a||1\rZXY|z\rOBX|2|NM|b||2\r");
        let values: Vec<String> = m.segments_named("OBX").map(|s| s.text(5)).collect();
        assert_eq!(values, ["1", "2"]);
        assert_eq!(m.segment("ZXY").map(|z| z.text(1)), Some("z".to_owned()));
        assert!(m.segment("NTE").is_none());
    }

    #[test]
    fn batch_header_uses_msh_numbering() {
        let m = msg("MSH|^~\\&|A\rBHS|^~\\&|SENDER\r");
        let bhs = m.segment("BHS").expect("bhs");
        assert_eq!((bhs.text(1), bhs.text(2), bhs.text(3)), ("|".to_owned(), "^~\\&".to_owned(), "SENDER".to_owned()));
    }

    #[test]
    fn borrowed_when_no_escape() {
        let m = msg(ADT);
        let pid = m.segment("PID").expect("pid");
        assert!(matches!(pid.value(5, 1, 1, 1), Value::Text(Cow::Borrowed("DOE"))));
    }

    #[test]
    fn message_is_send_and_sync() {
        // Handlers move parsed messages across async tasks.
        fn check<T: Send + Sync>() {}
        check::<Message>();
        check::<Hl7Error>();
    }

    #[test]
    fn debug_output_is_linear() {
        let m = msg(ADT);
        let dbg = format!("{m:?}");
        assert!(dbg.len() < ADT.len() * 3, "debug output is {} bytes", dbg.len());
        assert!(dbg.contains("PV1|1|I|W1^101^A"));
    }
}
