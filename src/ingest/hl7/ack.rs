//! The HL7 reply: which ACKs a message gets (original or enhanced mode, MSH-15 / MSH-16) for
//! a refusal or an ingest [`Outcome`], and how an ACK/NAK is written (MSH, MSA, ERR).
//!
//! Replies are written with the sender's own delimiter set so that peers
//! which hard-code their delimiters can read them.

use std::borrow::Cow;

use crate::ingest::Outcome;

use super::parse::{
    Delimiters, Hl7Error, Message, decode_auto, first_component_bytes, first_line, msh_field_bytes, read_delimiters,
    trim_input, unescape,
};

/// Version written when the original message did not say (or could not be read).
pub const DEFAULT_VERSION: &str = "2.5.1";

/// Escapes text for use as one leaf value under delimiter set `d`.
///
/// Delimiters become `\F\ \S\ \R\ \T\ \E\ \P\`. CR and LF become `\X0D\` and
/// `\X0A\` rather than `\.br\`, because `\.br\` cannot tell CR from LF and so
/// would not round-trip. A value that is exactly `""` gets its first quote
/// written as `\X22\` so the receiver does not read it as the HL7 null.
///
/// If `d` declares no escape character there is no way to carry delimiters,
/// so they (and CR/LF) are replaced by spaces: lossy, but it keeps the
/// message structure intact.
pub fn escape<'a>(text: &'a str, d: &Delimiters) -> Cow<'a, str> {
    let special = |c: char| {
        c == d.field
            || c == d.component
            || c == d.repetition
            || c == d.subcomponent
            || c == d.escape
            || Some(c) == d.truncation
            || c == '\r'
            || c == '\n'
    };
    let looks_null = text == "\"\"";
    if !looks_null && !text.chars().any(special) {
        return Cow::Borrowed(text);
    }
    if !d.has_escape() {
        return Cow::Owned(text.chars().map(|c| if special(c) { ' ' } else { c }).collect());
    }
    let mut out = String::with_capacity(text.len() + 8);
    if looks_null {
        out.push(d.escape);
        out.push_str("X22");
        out.push(d.escape);
        out.push('"');
        return Cow::Owned(out);
    }
    for c in text.chars() {
        // Escape is checked first so a user-built set with clashes still
        // produces something unescape reads back as the escape char.
        let code = if c == d.escape {
            "E"
        } else if c == d.field {
            "F"
        } else if c == d.component {
            "S"
        } else if c == d.subcomponent {
            "T"
        } else if c == d.repetition {
            "R"
        } else if Some(c) == d.truncation {
            "P"
        } else if c == '\r' {
            "X0D"
        } else if c == '\n' {
            "X0A"
        } else {
            out.push(c);
            continue;
        };
        out.push(d.escape);
        out.push_str(code);
        out.push(d.escape);
    }
    Cow::Owned(out)
}

/// MSA-1 acknowledgment code (HL7 table 0008).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AckCode {
    AA,
    AE,
    AR,
    CA,
    CE,
    CR,
}

impl AckCode {
    pub fn as_str(&self) -> &'static str {
        match self {
            AckCode::AA => "AA",
            AckCode::AE => "AE",
            AckCode::AR => "AR",
            AckCode::CA => "CA",
            AckCode::CE => "CE",
            AckCode::CR => "CR",
        }
    }
}

/// ERR-4 severity (HL7 table 0516).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrSeverity {
    Error,
    Warning,
    Info,
    Fatal,
}

impl ErrSeverity {
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrSeverity::Error => "E",
            ErrSeverity::Warning => "W",
            ErrSeverity::Info => "I",
            ErrSeverity::Fatal => "F",
        }
    }
}

/// ERR-2 (ERL) error location. Zero means "not known" and ends the ERL there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrLocation {
    pub segment: String,
    pub sequence: u32,
    pub field: u32,
    pub component: u32,
}

/// One ERR segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckError {
    pub location: Option<ErrLocation>,
    /// HL7 table 0357 code.
    pub code: u16,
    pub severity: ErrSeverity,
    /// Free text for people reading the NAK; written to ERR-8 (user message).
    pub text: String,
}

impl AckError {
    pub fn new(code: u16, severity: ErrSeverity, text: impl Into<String>) -> Self {
        Self { location: None, code, severity, text: text.into() }
    }

    pub fn at(mut self, location: ErrLocation) -> Self {
        self.location = Some(location);
        self
    }

    /// Turns a parser error into an ERR. ERR-2 is only filled for MSH
    /// problems: for other segments the parser knows the position in the
    /// message, not the occurrence number ERL-2 asks for, and a wrong ERL is
    /// worse than none (the text still carries segment index and byte).
    pub fn from_parse_error(e: &Hl7Error) -> Self {
        let location = match (&e.location.segment, e.location.field) {
            (Some(seg), Some(field)) if seg == "MSH" => Some(ErrLocation {
                segment: seg.clone(),
                sequence: 1,
                field: u32::try_from(field).unwrap_or(0),
                component: 0,
            }),
            _ => None,
        };
        Self { location, code: e.kind.ack_code(), severity: ErrSeverity::Error, text: e.to_string() }
    }
}

/// Text for an HL7 table 0357 code, as spelled in the standard; `""` for codes
/// outside the table.
pub fn hl7_error_text(code: u16) -> &'static str {
    match code {
        0 => "Message accepted",
        100 => "Segment sequence error",
        101 => "Required field missing",
        102 => "Data type error",
        103 => "Table value not found",
        200 => "Unsupported message type",
        201 => "Unsupported event code",
        202 => "Unsupported processing id",
        203 => "Unsupported version id",
        204 => "Unknown key identifier",
        205 => "Duplicate key identifier",
        206 => "Application record locked",
        207 => "Application internal error",
        _ => "",
    }
}

/// What the ACK's MSH and MSA need from the message being acknowledged.
/// `sending_*` are us, `receiving_*` the original sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckHeader {
    pub sending_app: String,
    pub sending_facility: String,
    pub receiving_app: String,
    pub receiving_facility: String,
    /// The original MSH-10, echoed in MSA-2.
    pub control_id: String,
    pub version: String,
    /// The original MSH-9.2, echoed in the ACK's MSH-9.2.
    pub trigger: String,
    pub delimiters: Delimiters,
    pub processing_id: String,
}

impl Default for AckHeader {
    fn default() -> Self {
        Self {
            sending_app: String::new(),
            sending_facility: String::new(),
            receiving_app: String::new(),
            receiving_facility: String::new(),
            control_id: String::new(),
            version: DEFAULT_VERSION.to_owned(),
            trigger: String::new(),
            delimiters: Delimiters::default(),
            processing_id: "P".to_owned(),
        }
    }
}

impl AckHeader {
    /// Replies as the application the sender addressed (MSH-5/6) to the
    /// sender (MSH-3/4).
    pub fn from_message(m: &Message) -> AckHeader {
        let or_default = |s: &str, d: &str| {
            if s.is_empty() { d.to_owned() } else { s.to_owned() }
        };
        AckHeader {
            sending_app: m.receiving_application().to_owned(),
            sending_facility: m.receiving_facility().to_owned(),
            receiving_app: m.sending_application().to_owned(),
            receiving_facility: m.sending_facility().to_owned(),
            control_id: m.control_id().to_owned(),
            version: or_default(m.version(), DEFAULT_VERSION),
            trigger: m.message_type().1.to_owned(),
            delimiters: *m.delimiters(),
            processing_id: or_default(m.processing_id(), "P"),
        }
    }

    /// Best effort for a message that did not parse: reads whatever MSH
    /// fields it can from the first line of the raw bytes. Never fails; any
    /// part it cannot read keeps its default.
    pub fn fallback(raw: &[u8]) -> AckHeader {
        let mut h = AckHeader::default();
        let (_, body) = trim_input(raw);
        if !body.starts_with(b"MSH") {
            return h;
        }
        let Ok(d) = read_delimiters(body) else {
            return h;
        };
        h.delimiters = d;
        let line = first_line(body);
        let fs = u8::try_from(d.field).unwrap_or(b'|');
        let comp = u8::try_from(d.component).unwrap_or(b'^');
        let get = |n: usize, c: usize| -> String {
            let Some((_, field)) = msh_field_bytes(line, fs, n) else {
                return String::new();
            };
            let bytes = if c == 1 {
                first_component_bytes(field, &d)
            } else {
                let first_rep = if d.has_repetition() {
                    let rep = u8::try_from(d.repetition).unwrap_or(b'~');
                    field.split(|&b| b == rep).next().unwrap_or(field)
                } else {
                    field
                };
                first_rep.split(|&b| b == comp).nth(c.saturating_sub(1)).unwrap_or_default().trim_ascii()
            };
            let text = decode_auto(bytes);
            if text == "\"\"" {
                return String::new();
            }
            let sub = if d.has_subcomponent() { d.subcomponent } else { d.component };
            let first_sub = text.split(sub).next().unwrap_or_default();
            unescape(first_sub, &d).into_owned()
        };
        h.sending_app = get(5, 1);
        h.sending_facility = get(6, 1);
        h.receiving_app = get(3, 1);
        h.receiving_facility = get(4, 1);
        h.trigger = get(9, 2);
        h.control_id = get(10, 1);
        let processing_id = get(11, 1);
        if !processing_id.is_empty() {
            h.processing_id = processing_id;
        }
        let version = get(12, 1);
        if !version.is_empty() {
            h.version = version;
        }
        h
    }
}

/// Builds an ACK (MSH, MSA, one ERR per error), CR-terminated, escaped with
/// the original message's delimiters.
///
/// ERR-2 follows the ERL data type: segment^sequence^field^repetition^component,
/// with repetition written as 1 when a component is given. ERR-3 is
/// code^table text^HL70357 and the error's own text goes to ERR-8.
pub fn build_ack(
    h: &AckHeader,
    code: AckCode,
    errors: &[AckError],
    our_control_id: &str,
    timestamp: &str,
    text: Option<&str>,
) -> String {
    // A hand-built header could carry clashing delimiters; a reply the peer
    // cannot split is worse than one in the standard set.
    let d = if h.delimiters.validate().is_ok() { h.delimiters } else { Delimiters::default() };
    let mut out = String::with_capacity(160 + 96 * errors.len());
    let field = |out: &mut String, value: &str| {
        out.push(d.field);
        out.push_str(&escape(value, &d));
    };

    out.push_str("MSH");
    out.push(d.field);
    out.push_str(&d.encoding_characters());
    for v in [&h.sending_app, &h.sending_facility, &h.receiving_app, &h.receiving_facility] {
        field(&mut out, v);
    }
    field(&mut out, timestamp);
    field(&mut out, "");
    out.push(d.field);
    let mut version = if h.version.is_empty() { DEFAULT_VERSION } else { &h.version };
    if h.trigger == "R40" {
        // IHE PCD-04: an alert report is answered ORA^R41. The message is defined from HL7
        // v2.8 on in the published structures strict validators carry (v2.6 senders
        // pre-adopt it), so an older version is answered as 2.8.
        for (i, part) in ["ORA", "R41", "ORA_R41"].into_iter().enumerate() {
            if i > 0 {
                out.push(d.component);
            }
            out.push_str(part);
        }
        if version_before_2_8(version) {
            version = ORA_R41_VERSION;
        }
    } else {
        out.push_str("ACK");
        if !h.trigger.is_empty() {
            out.push(d.component);
            out.push_str(&escape(&h.trigger, &d));
            out.push(d.component);
            out.push_str("ACK");
        }
    }
    field(&mut out, our_control_id);
    field(&mut out, if h.processing_id.is_empty() { "P" } else { &h.processing_id });
    field(&mut out, version);
    out.push('\r');

    out.push_str("MSA");
    field(&mut out, code.as_str());
    field(&mut out, &h.control_id);
    if let Some(t) = text {
        field(&mut out, t);
    }
    out.push('\r');

    for e in errors {
        out.push_str("ERR");
        field(&mut out, "");
        out.push(d.field);
        if let Some(loc) = &e.location {
            out.push_str(&escape(&loc.segment, &d));
            let mut parts = vec![loc.sequence.to_string()];
            if loc.field > 0 {
                parts.push(loc.field.to_string());
                if loc.component > 0 {
                    parts.push("1".to_owned());
                    parts.push(loc.component.to_string());
                }
            }
            for p in parts {
                out.push(d.component);
                out.push_str(&p);
            }
        }
        out.push(d.field);
        out.push_str(&e.code.to_string());
        out.push(d.component);
        out.push_str(&escape(hl7_error_text(e.code), &d));
        out.push(d.component);
        out.push_str("HL70357");
        field(&mut out, e.severity.as_str());
        if !e.text.is_empty() {
            for _ in 5..8 {
                out.push(d.field);
            }
            field(&mut out, &e.text);
        }
        out.push('\r');
    }
    out
}

/// The version an ORA^R41 declares when the alert report's is older.
pub const ORA_R41_VERSION: &str = "2.8";

/// `2.1` ... `2.7.1`: versions whose message structures have no ORA_R41.
fn version_before_2_8(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| p.trim().parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) < (2, 8)
}

/// How the sender asked to be acknowledged (MSH-15, MSH-16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    /// MSH-15 and MSH-16 empty: one application ACK, AA / AE / AR.
    Original,
    /// Enhanced mode: accept ACK CA / CE / CR sent according to MSH-15, then an application
    /// ACK AA / AE according to MSH-16.
    Enhanced {
        /// MSH-15 AL or SU.
        on_success: bool,
        /// MSH-15 AL or ER.
        on_error: bool,
        /// MSH-16 AL or SU.
        app_on_success: bool,
        /// MSH-16 AL or ER.
        app_on_error: bool,
    },
}

impl AckMode {
    /// The mode `msg` asks for.
    pub fn of(msg: &Message) -> AckMode {
        let accept = msg.accept_ack_type();
        if accept.is_empty() && msg.app_ack_type().is_empty() {
            return AckMode::Original;
        }
        let (on_success, on_error) = match accept {
            "NE" => (false, false),
            "ER" => (false, true),
            "SU" => (true, false),
            // AL, empty with MSH-16 set, or unknown: always answer; silence is the worse error.
            _ => (true, true),
        };
        // MSH-16 empty or NE: no application ACK (the accept ACK already says it is durable).
        let (app_on_success, app_on_error) = match msg.app_ack_type() {
            "AL" => (true, true),
            "SU" => (true, false),
            "ER" => (false, true),
            _ => (false, false),
        };
        AckMode::Enhanced { on_success, on_error, app_on_success, app_on_error }
    }

    /// The application ACK code after a successful accept ACK, when MSH-16 asks for one.
    fn app_success(self) -> Option<AckCode> {
        match self {
            AckMode::Enhanced { app_on_success: true, .. } => Some(AckCode::AA),
            _ => None,
        }
    }

    /// The application ACK code after an application error, when MSH-16 asks for one.
    fn app_failure(self) -> Option<AckCode> {
        match self {
            AckMode::Enhanced { app_on_error: true, .. } => Some(AckCode::AE),
            _ => None,
        }
    }

    fn success(self) -> Option<AckCode> {
        match self {
            AckMode::Original => Some(AckCode::AA),
            AckMode::Enhanced { on_success, .. } => on_success.then_some(AckCode::CA),
        }
    }

    /// `reject` for messages we will not take (AR/CR), otherwise an error (AE/CE).
    fn failure(self, reject: bool) -> Option<AckCode> {
        match (self, reject) {
            (AckMode::Original, true) => Some(AckCode::AR),
            (AckMode::Original, false) => Some(AckCode::AE),
            (AckMode::Enhanced { on_error, .. }, true) => on_error.then_some(AckCode::CR),
            (AckMode::Enhanced { on_error, .. }, false) => on_error.then_some(AckCode::CE),
        }
    }
}

/// Why a message is answered with an error.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Refusal {
    /// Not taken at all (AR / CR): unparseable, bad header, unsupported type, too large.
    Reject,
    /// The content is wrong (AE / CE, then AE as the application ACK when MSH-16 asks).
    Content,
}

impl AckMode {
    /// The ACK codes, in the order to send them, of a message refused for `why` with
    /// `errors`; `ack` builds one ACK.
    pub fn refusal(
        self,
        why: Refusal,
        errors: &[AckError],
        ack: impl Fn(AckCode, &[AckError]) -> String,
    ) -> Vec<String> {
        let mut acks: Vec<String> =
            self.failure(why == Refusal::Reject).map(|code| ack(code, errors)).into_iter().collect();
        if why == Refusal::Content {
            acks.extend(self.app_failure().map(|code| ack(code, errors)));
        }
        acks
    }

    /// The ACKs of a submitted message's outcome: AA, or CA then AA per MSH-16, when it is
    /// accepted (stored, a duplicate, nothing to store); an error asking for a resend when it
    /// was not stored.
    pub fn outcome(self, outcome: Outcome, ack: impl Fn(AckCode, &[AckError]) -> String) -> Vec<String> {
        if outcome.accepted() {
            return [self.success(), self.app_success()].into_iter().flatten().map(|code| ack(code, &[])).collect();
        }
        let err = AckError::new(207, ErrSeverity::Error, "application internal error: message not stored, resend");
        self.failure(false).map(|code| ack(code, std::slice::from_ref(&err))).into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Charset, Hl7ErrorKind, Value};
    use super::*;

    const TS: &str = "20240102030405+0000";

    #[test]
    fn escape_every_special_char() {
        let d = Delimiters { truncation: Some('#'), ..Delimiters::default() };
        assert_eq!(escape("a|b^c~d\\e&f#g\rh\ni", &d), "a\\F\\b\\S\\c\\R\\d\\E\\e\\T\\f\\P\\g\\X0D\\h\\X0A\\i");
        assert!(matches!(escape("plain ÄÖ text", &d), Cow::Borrowed(_)));
        assert_eq!(escape("\"\"", &d), "\\X22\\\"");
        assert_eq!(unescape(&escape("\"\"", &d), &d), "\"\"");
        assert_eq!(escape("\"", &d), "\"");
        let odd = Delimiters {
            field: '#',
            component: '@',
            repetition: '*',
            escape: '$',
            subcomponent: '%',
            truncation: None,
        };
        assert_eq!(escape("a#b@c$d|", &odd), "a$F$b$S$c$E$d|");
        let no_escape = Delimiters { escape: '|', subcomponent: '^', ..Delimiters::default() };
        assert_eq!(escape("a|b^c\rd", &no_escape), "a b c d");
    }

    #[test]
    fn error_table_text() {
        assert_eq!(hl7_error_text(0), "Message accepted");
        assert_eq!(hl7_error_text(101), "Required field missing");
        assert_eq!(hl7_error_text(203), "Unsupported version id");
        assert_eq!(hl7_error_text(207), "Application internal error");
        assert_eq!(hl7_error_text(999), "");
        let all = [0, 100, 101, 102, 103, 200, 201, 202, 203, 204, 205, 206, 207];
        assert!(all.iter().all(|&c| !hl7_error_text(c).is_empty()));
    }

    #[test]
    fn header_from_message_swaps_sender_and_receiver() {
        let m = Message::parse(b"MSH|^~\\&|EPIC|CITY|VIGIL|VFAC|x||ADT^A01^ADT_A01|C1|T|2.4").expect("parses");
        let h = AckHeader::from_message(&m);
        assert_eq!((h.sending_app.as_str(), h.sending_facility.as_str()), ("VIGIL", "VFAC"));
        assert_eq!((h.receiving_app.as_str(), h.receiving_facility.as_str()), ("EPIC", "CITY"));
        assert_eq!((h.control_id.as_str(), h.trigger.as_str()), ("C1", "A01"));
        assert_eq!((h.version.as_str(), h.processing_id.as_str()), ("2.4", "T"));
    }

    #[test]
    fn ack_accept_exact_output() {
        let m = Message::parse(b"MSH|^~\\&|EPIC|CITY|VIGIL|VFAC|x||ADT^A01^ADT_A01|C1|P|2.5.1").expect("parses");
        let ack = build_ack(&AckHeader::from_message(&m), AckCode::AA, &[], "V0001", TS, None);
        assert_eq!(ack, "MSH|^~\\&|VIGIL|VFAC|EPIC|CITY|20240102030405+0000||ACK^A01^ACK|V0001|P|2.5.1\rMSA|AA|C1\r");
    }

    #[test]
    fn an_alert_report_is_answered_ora_r41_in_a_version_that_defines_it() {
        let m = Message::parse(b"MSH|^~\\&|ACM|ICU|VIGIL|VFAC|x||ORU^R40^ORU_R40|C1|P|2.6|||AL|NE").expect("parses");
        let ack = build_ack(&AckHeader::from_message(&m), AckCode::CA, &[], "V0001", TS, None);
        assert_eq!(ack, "MSH|^~\\&|VIGIL|VFAC|ACM|ICU|20240102030405+0000||ORA^R41^ORA_R41|V0001|P|2.8\rMSA|CA|C1\r");
        let newer = Message::parse(b"MSH|^~\\&|ACM|ICU|VIGIL|VFAC|x||ORU^R40^ORU_R40|C1|P|2.8.2").expect("parses");
        let ack = build_ack(&AckHeader::from_message(&newer), AckCode::AA, &[], "V0002", TS, None);
        assert!(ack.contains("||ORA^R41^ORA_R41|V0002|P|2.8.2\r"), "{ack}");
        assert!(version_before_2_8("2.7.1") && version_before_2_8("") && !version_before_2_8("2.8"));
    }

    #[test]
    fn nak_with_errors_parses_back() {
        let m = Message::parse(b"MSH|^~\\&|EP|CI|VI|VF|x||ADT^A01|C|1|P|2.5.1").expect("parses");
        let h = AckHeader { control_id: "C|1".to_owned(), ..AckHeader::from_message(&m) };
        let errors = [
            AckError::new(101, ErrSeverity::Error, "pid-3 is empty").at(ErrLocation {
                segment: "PID".to_owned(),
                sequence: 1,
                field: 3,
                component: 1,
            }),
            AckError::new(207, ErrSeverity::Warning, "line1\nline2 | ^ & ~ \\"),
            AckError::new(102, ErrSeverity::Fatal, ""),
        ];
        let ack = build_ack(&h, AckCode::AE, &errors, "V2", TS, Some("see ERR"));
        let lines: Vec<&str> = ack.split('\r').collect();
        assert_eq!(lines.get(1).copied(), Some("MSA|AE|C\\F\\1|see ERR"));
        assert_eq!(
            lines.get(2).copied(),
            Some("ERR||PID^1^3^1^1|101^Required field missing^HL70357|E||||pid-3 is empty")
        );
        assert_eq!(lines.get(4).copied(), Some("ERR|||102^Data type error^HL70357|F"));
        assert!(ack.ends_with('\r'));

        let back = Message::parse(ack.as_bytes()).expect("ack parses");
        assert!(back.validate_header().is_ok());
        assert_eq!(back.message_type(), ("ACK", "A01", "ACK"));
        let msa = back.segment("MSA").expect("msa");
        assert_eq!((msa.text(1), msa.text(2), msa.text(3)), ("AE".to_owned(), "C|1".to_owned(), "see ERR".to_owned()));
        let errs: Vec<_> = back.segments_named("ERR").collect();
        assert_eq!(errs.len(), 3);
        let first = errs.first().expect("err 1");
        assert_eq!(
            (first.text(2), first.component(2, 3), first.component(2, 5)),
            ("PID".to_owned(), "3".to_owned(), "1".to_owned())
        );
        assert_eq!(
            (first.component(3, 1), first.component(3, 3), first.text(4)),
            ("101".to_owned(), "HL70357".to_owned(), "E".to_owned())
        );
        assert_eq!(errs.get(1).map(|e| e.text(8)), Some("line1\nline2 | ^ & ~ \\".to_owned()));
        assert_eq!(errs.get(1).map(|e| e.value(2, 1, 1, 1)), Some(Value::Empty));
    }

    #[test]
    fn ack_uses_sender_delimiters() {
        let m = Message::parse(b"MSH#@*$%#A@1#F#V#VF#x##ORU@R01#id$F$1#P#2.3").expect("parses");
        let errors = [AckError::new(207, ErrSeverity::Error, "bad # and @ and $")];
        let ack = build_ack(&AckHeader::from_message(&m), AckCode::AR, &errors, "V#9", TS, None);
        assert!(ack.starts_with("MSH#@*$%#V#VF#A#F#"), "{ack}");
        assert!(ack.contains("#ACK@R01@ACK#V$F$9#P#2.3\rMSA#AR#id$F$1\r"), "{ack}");
        let back = Message::parse(ack.as_bytes()).expect("ack parses");
        assert_eq!(back.delimiters(), m.delimiters());
        assert_eq!(back.control_id(), "V#9");
        assert_eq!(back.segment("MSA").map(|s| s.text(2)), Some("id#1".to_owned()));
        assert_eq!(back.segment("ERR").map(|s| s.text(8)), Some("bad # and @ and $".to_owned()));
    }

    #[test]
    fn ack_with_truncation_and_partial_encoding_chars() {
        let m = Message::parse(b"MSH|^~\\&#|A|B|C|D|||ADT^A01|X#1|P|2.7").expect("parses");
        let ack = build_ack(&AckHeader::from_message(&m), AckCode::AA, &[], "1", TS, None);
        assert!(ack.starts_with("MSH|^~\\&#|"));
        assert!(ack.contains("MSA|AA|X\\P\\1\r"), "{ack}");
        let m = Message::parse(b"MSH|^~|A|B|C|D|||ADT^A01|X1|P|2.2").expect("parses");
        let ack = build_ack(&AckHeader::from_message(&m), AckCode::AA, &[], "1", TS, Some("a|b"));
        assert!(ack.starts_with("MSH|^~|"));
        assert!(ack.contains("MSA|AA|X1|a b\r"), "{ack}");
        assert!(Message::parse(ack.as_bytes()).is_ok());
    }

    #[test]
    fn fallback_reads_what_it_can() {
        assert_eq!(AckHeader::fallback(b""), AckHeader::default());
        assert_eq!(AckHeader::fallback(b"\xff\xfe garbage"), AckHeader::default());
        assert_eq!(AckHeader::fallback(b"MSH"), AckHeader::default());
        let h = AckHeader::fallback(b"MSH|^~\\&|EP^x|CI|VI|VF|x||ADT^A04|C\\F\\9|T|2.3.1\rpid|broken\xff");
        assert_eq!(h.control_id, "C|9");
        assert_eq!((h.receiving_app.as_str(), h.sending_app.as_str()), ("EP", "VI"));
        assert_eq!((h.trigger.as_str(), h.processing_id.as_str(), h.version.as_str()), ("A04", "T", "2.3.1"));
        let h = AckHeader::fallback(b"MSH#@*$%#A#B#C#D###ADT@A01#Z9");
        assert_eq!((h.control_id.as_str(), h.delimiters.field, h.version.as_str()), ("Z9", '#', DEFAULT_VERSION));
        let h = AckHeader::fallback(b"MSH|^~\\&|A|B|C|D|||ADT^A01|Zo\xEB");
        assert_eq!(h.control_id, "Zoë");
    }

    #[test]
    fn nak_for_parse_errors() {
        let raw = b"MSH|^~\\&|A|B|C|D|||ADT^A01|CTL7|P|2.5||||||8859/7\r";
        let e = Message::parse(raw).expect_err("unsupported charset");
        assert!(matches!(e.kind, Hl7ErrorKind::UnsupportedCharset(_)));
        let err = AckError::from_parse_error(&e);
        assert_eq!(err.code, 203);
        assert_eq!(err.location.as_ref().map(|l| (l.segment.as_str(), l.field)), Some(("MSH", 18)));
        let ack = build_ack(&AckHeader::fallback(raw), AckCode::AR, &[err], "V1", TS, None);
        let back = Message::parse(ack.as_bytes()).expect("nak parses");
        assert_eq!(back.segment("MSA").map(|s| s.text(2)), Some("CTL7".to_owned()));
        assert_eq!(back.segment("ERR").map(|s| s.component(2, 3)), Some("18".to_owned()));
        assert_eq!(back.charset(), Charset::Utf8);

        let m = Message::parse(b"MSH|^~\\&|A|B|C|D|||ADT^A01||P|2.5").expect("parses");
        let errs: Vec<AckError> = m.header_problems().iter().map(AckError::from_parse_error).collect();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs.first().map(|e| (e.code, e.location.as_ref().map(|l| l.field))), Some((101, Some(10))));
    }
}
