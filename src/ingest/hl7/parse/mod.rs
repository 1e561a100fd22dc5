//! MLLP frame -> hl7::parse (raw bytes to a navigable `Message`: this file; delimiters, charsets,
//! escapes and errors beside it) -> the HL7 feed maps it; hl7::ack builds the reply.
//!
//! The parser decodes the whole message once into a `String` and then only
//! records byte spans (segments and fields). A value (repetition, component,
//! subcomponent) is found on access in one pass over its field (`locate`), and
//! escape sequences are decoded on access into a `Cow`, so a value without an
//! escape character never allocates.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

mod charset;
mod delimiters;
mod error;
mod escape;

pub use charset::*;
pub use delimiters::*;
pub use error::*;
pub use escape::*;

/// The HL7 "null": a value that is exactly two double quotes tells the
/// receiver to clear what it holds, which is not the same as "not sent".
const HL7_NULL: &str = "\"\"";

/// `\.sp N\` is a display hint; an attacker-sized N must not turn a few bytes
/// into megabytes of newlines.
const MAX_SP_LINES: usize = 64;

const BOM: &[u8] = b"\xEF\xBB\xBF";

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
    /// Which byte separates which level inside a field (`locate`).
    levels: Option<Levels>,
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
        let raw = self.raw();
        if raw.is_empty() {
            return None;
        }
        let raw =
            if self.literal { (n == 1).then_some(raw)? } else { nth_part(raw, self.shared.delimiters.repetition, n)? };
        Some(Repetition { raw, shared: &self.shared, literal: self.literal })
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
        if self.literal {
            return self.repetition(rep).map_or(Value::Empty, |r| r.value(comp, sub));
        }
        match locate(self.raw(), &self.shared, rep, comp, sub) {
            None | Some("") => Value::Empty,
            Some(v) => leaf_value(v, &self.shared),
        }
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
        let found = if self.literal { self.sub_raw(c, s) } else { locate(self.raw, self.shared, 1, c, s) };
        match found {
            None => Value::Empty,
            Some("") => Value::Empty,
            Some(v) if self.literal => Value::Text(Cow::Borrowed(v)),
            Some(v) => leaf_value(v, self.shared),
        }
    }

    /// Subcomponent 1 of component `c`, unescaped, borrowed unless an escape was decoded;
    /// `""` when empty or null.
    pub fn get(&self, c: usize) -> Cow<'a, str> {
        self.value(c, 1).into_text().unwrap_or(Cow::Borrowed(""))
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

/// Part `n` (1-based) of `text` split at `sep`. Delimiters are ASCII in practice and the
/// parts short, so a byte scan beats both a general `split` and memchr (whose set-up costs
/// more than a 20-byte component).
fn nth_part(text: &str, sep: char, n: usize) -> Option<&str> {
    let n = n.checked_sub(1)?;
    if !sep.is_ascii() {
        return text.split(sep).nth(n);
    }
    let sep = sep as u8;
    let (mut start, mut seen) = (0, 0);
    for (i, &b) in text.as_bytes().iter().enumerate() {
        if b == sep {
            if seen == n {
                // An ASCII byte is always a char boundary.
                return text.get(start..i);
            }
            seen += 1;
            start = i + 1;
        }
    }
    (seen == n).then(|| text.get(start..)).flatten()
}

/// Which level each byte separates inside a field: 0 for none, then repetition, component,
/// subcomponent. Built once per message, so finding a value is one pass over its field with
/// one table load per byte, instead of a split per level.
#[derive(Debug)]
struct Levels([u8; 256]);

impl Levels {
    const REPETITION: u8 = 1;
    const COMPONENT: u8 = 2;
    const SUBCOMPONENT: u8 = 3;

    /// `None` when a delimiter is not ASCII (never, for a parsed message: they are checked).
    fn new(d: &Delimiters) -> Option<Levels> {
        let mut table = [0u8; 256];
        // Innermost first: a level the sender did not declare shares its parent's character
        // (a missing subcomponent is the component), and then it is the parent's level.
        let innermost_first =
            [(d.subcomponent, Self::SUBCOMPONENT), (d.component, Self::COMPONENT), (d.repetition, Self::REPETITION)];
        for (c, level) in innermost_first {
            if !c.is_ascii() {
                return None;
            }
            table[usize::from(c as u8)] = level;
        }
        Some(Levels(table))
    }
}

/// The text of a field at repetition `rep`, component `comp` and subcomponent `sub` (1-based),
/// as sent (escaped); `None` when the field has no such part.
fn locate<'t>(raw: &'t str, shared: &Shared, rep: usize, comp: usize, sub: usize) -> Option<&'t str> {
    if rep == 0 || comp == 0 || sub == 0 {
        return None;
    }
    let Some(levels) = &shared.levels else {
        let d = &shared.delimiters;
        let part = nth_part(raw, d.repetition, rep)?;
        return nth_part(nth_part(part, d.component, comp)?, d.subcomponent, sub);
    };
    let want = [rep, comp, sub];
    let mut at = [1, 1, 1];
    let mut start = 0;
    for (i, &b) in raw.as_bytes().iter().enumerate() {
        let level = levels.0[usize::from(b)];
        if level == 0 {
            continue;
        }
        if at == want {
            // Separators are ASCII, so every cut is a char boundary.
            return raw.get(start..i);
        }
        at = match level {
            Levels::REPETITION => [at[0] + 1, 1, 1],
            Levels::COMPONENT => [at[0], at[1] + 1, 1],
            _ => [at[0], at[1], at[2] + 1],
        };
        if at > want {
            return None;
        }
        start = i + 1;
    }
    (at == want).then(|| raw.get(start..)).flatten()
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

    /// Subcomponent 1 of component `c` in repetition 1 of field `n`, unescaped, borrowed
    /// unless an escape was decoded (the mappers' reads, without a `String` each); `""` when
    /// absent, empty or null.
    pub fn get(&self, n: usize, c: usize) -> Cow<'_, str> {
        self.value(n, 1, c, 1).into_text().unwrap_or(Cow::Borrowed(""))
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

        let levels = Levels::new(&delimiters);
        let shared = Arc::new(Shared { text, delimiters, charset, base, widened, levels });
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
        let len = memchr::memchr2(b'\r', b'\n', rest).unwrap_or(rest.len());
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
    let separators = memchr::memchr_iter(fs, line).count();
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
        // A byte loop: fields are short, and memchr's set-up per field costs more than this.
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

#[cfg(test)]
mod tests;
