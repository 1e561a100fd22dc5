//! MLLP frame -> hl7::parse -> hl7::encode: property tests over the whole module (escaping round trips, no panics on hostile input).

use proptest::prelude::*;

use super::*;

const CASES: u32 = 10_000;

fn legal_chars() -> Vec<char> {
    (0x20u8..0x7F).map(char::from).filter(|&c| is_legal_delimiter(c)).collect()
}

fn delimiters() -> impl Strategy<Value = Delimiters> {
    (proptest::sample::subsequence(legal_chars(), 6).prop_shuffle(), any::<bool>()).prop_map(|(v, trunc)| Delimiters {
        field: v[0],
        component: v[1],
        repetition: v[2],
        escape: v[3],
        subcomponent: v[4],
        truncation: trunc.then_some(v[5]),
    })
}

/// Arbitrary Unicode with a heavy dose of characters that matter to HL7.
fn hl7ish_text() -> impl Strategy<Value = String> {
    let ch = prop_oneof![
        4 => any::<char>(),
        3 => proptest::sample::select(legal_chars()),
        1 => proptest::sample::select(vec!['\r', '\n', '"', 'X', '.', ' ', '0', 'D']),
    ];
    prop_oneof![
        proptest::collection::vec(ch, 0..40).prop_map(|v| v.into_iter().collect::<String>()),
        any::<String>(),
        Just("\"\"".to_owned()),
    ]
}

const SAMPLES: &[&str] = &[
    "MSH|^~\\&|EPIC|CITY|VIGIL|V|20240101||ADT^A01^ADT_A01|C1|P|2.5.1|||AL|NE||UNICODE UTF-8\r\
     PID|1||1^^^H^MR~2^^^H^PI||DOE^JOHN||19800101|M|\"\"||1 MAIN&APT 2^X\\F\\Y\r\
     NTE|1||line\\.br\\two\\X41\\\\.sp 2\\\\H\\b\\N\\\rZZZ|1\r",
    "MSH#@*$%#A#B#C#D###ORU@R01#C2#P#2.4\rOBX#1#TX###a$F$b@c%d*e\r",
    "MSH|^~\\&#|A|B|C|D|||ADT^A08|C3|P|2.7||||||8859/1\rPID|1||x\\P\\\r",
];

/// Touches every accessor so a panic anywhere in lazy splitting shows up.
fn walk(m: &Message) -> usize {
    let mut n = m.control_id().len() + m.version().len() + m.raw().len();
    let (a, b, c) = m.message_type();
    n += a.len() + b.len() + c.len();
    n += m.sending_application().len() + m.sending_facility().len() + m.processing_id().len();
    n += m.accept_ack_type().len() + m.app_ack_type().len();
    n += usize::from(m.validate_header().is_ok()) + m.header_problems().len();
    let _ = m.charset().hl7_name();
    for seg in m.segments() {
        n += seg.name().len() + seg.raw().len() + seg.field_count() + seg.text(1).len();
        for fi in 0..=seg.field_count() + 1 {
            n += seg.text(fi).len() + seg.component(fi, 2).len() + usize::from(seg.is_null(fi));
            n += seg.value(fi, 2, 2, 2).as_str().len();
            let Some(f) = seg.field(fi) else { continue };
            n += f.repetition_count() + f.raw().len();
            for r in f.repetitions().take(8) {
                n += r.component_count() + usize::from(r.is_null());
                for ci in 0..4 {
                    n += r.component(ci).len() + r.sub(ci, 2).len();
                    n += usize::from(r.value(ci, 1).is_null());
                }
            }
        }
    }
    n
}

fn mutate(base: &[u8], ops: &[(u8, usize, u8)]) -> Vec<u8> {
    let interesting = b"|^~\\&#\r\n\"X.MSH\xC3\xA9\xFF\x00 ";
    let mut v = base.to_vec();
    for &(kind, pos, byte) in ops {
        if v.is_empty() {
            v.push(byte);
            continue;
        }
        let at = pos % (v.len() + 1);
        let pick = interesting[usize::from(byte) % interesting.len()];
        match kind % 6 {
            0 => v.insert(at, pick),
            1 => {
                if at < v.len() {
                    v[at] = byte;
                }
            }
            2 => {
                let end = (at + usize::from(byte % 16)).min(v.len());
                v.drain(at..end);
            }
            3 => v.truncate(at),
            4 => {
                let end = (at + usize::from(byte % 32)).min(v.len());
                let chunk = v[at..end].to_vec();
                v.splice(at..at, chunk);
            }
            _ => {
                if at < v.len() {
                    v[at] = pick;
                }
            }
        }
    }
    v
}

/// Whatever arrives, the reply we build must be a message we can parse and
/// that echoes the control id we read.
fn check_ack(bytes: &[u8], parsed: Option<&Message>) {
    let h = parsed.map_or_else(|| AckHeader::fallback(bytes), AckHeader::from_message);
    let errors = [AckError::new(207, ErrSeverity::Error, String::from_utf8_lossy(bytes).into_owned())];
    let ack = build_ack(&h, AckCode::AE, &errors, "VIGIL-1", "20240101000000+0000", Some("t"));
    let back = Message::parse(ack.as_bytes()).unwrap_or_else(|e| panic!("ack does not parse: {e}: {ack:?}"));
    assert!(back.validate_header().is_ok(), "{ack:?}");
    if h.delimiters.has_escape() {
        assert_eq!(back.segment("MSA").map(|s| s.text(2)), Some(h.control_id.clone()), "{ack:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn escape_round_trips(s in hl7ish_text(), d in delimiters()) {
        let escaped = escape(&s, &d);
        for charset in [Charset::Utf8, Charset::Latin1, Charset::Ascii] {
            let back = unescape_with(&escaped, &d, charset);
            prop_assert_eq!(back.as_ref(), s.as_str());
        }
        let again = unescape(&escaped, &d);
        let re = escape(&again, &d);
        prop_assert_eq!(re.as_ref(), escaped.as_ref());
        prop_assert!(!escaped.contains(['\r', '\n']));
        prop_assert!(!escaped.contains(d.field) && !escaped.contains(d.component));
        prop_assert!(!escaped.contains(d.repetition) && !escaped.contains(d.subcomponent));
    }

    #[test]
    fn escaped_values_survive_a_message(s in hl7ish_text(), t in hl7ish_text(), d in delimiters()) {
        let (es, et) = (escape(&s, &d), escape(&t, &d));
        let f = d.field;
        let text = format!(
            "MSH{f}{enc}{f}A{f}B{f}C{f}D{f}{f}{f}ADT{c}A01{f}ID{f}P{f}2.5\rZZZ{f}{es}{f}{es}{c}{et}{r}{et}{s}{es}{f}END\r",
            enc = d.encoding_characters(), c = d.component, r = d.repetition, s = d.subcomponent,
        );
        let m = Message::parse(text.as_bytes()).map_err(|e| TestCaseError::fail(format!("{e}: {text:?}")))?;
        prop_assert_eq!(m.delimiters(), &d);
        let z = m.segment("ZZZ").ok_or_else(|| TestCaseError::fail("no ZZZ"))?;
        prop_assert_eq!(z.text(1), s.clone());
        prop_assert_eq!(z.component(2, 1), s.clone());
        prop_assert_eq!(z.component(2, 2), t.clone());
        prop_assert_eq!(z.value(2, 2, 1, 1).into_string(), t);
        prop_assert_eq!(z.value(2, 2, 1, 2).into_string(), s);
        prop_assert_eq!(z.text(3), "END");
    }

    #[test]
    fn parse_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(m) = Message::parse(&bytes) {
            walk(&m);
        }
        let _ = AckHeader::fallback(&bytes);
        let mut prefixed = b"MSH|^~\\&|".to_vec();
        prefixed.extend_from_slice(&bytes);
        match Message::parse(&prefixed) {
            Ok(m) => {
                walk(&m);
                check_ack(&prefixed, Some(&m));
            }
            Err(e) => {
                let _ = e.to_string();
                check_ack(&prefixed, None);
            }
        }
    }

    #[test]
    fn parse_never_panics_on_mutations(
        sample in 0..SAMPLES.len(),
        ops in proptest::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 1..8),
    ) {
        let bytes = mutate(SAMPLES[sample].as_bytes(), &ops);
        match Message::parse(&bytes) {
            Ok(m) => {
                walk(&m);
                check_ack(&bytes, Some(&m));
            }
            Err(e) => {
                let _ = AckError::from_parse_error(&e);
                if let Some(p) = e.location.position {
                    prop_assert!(p <= bytes.len(), "position {} beyond input {}", p, bytes.len());
                }
                check_ack(&bytes, None);
            }
        }
        let tight = ParseLimits { max_segments: 2, max_fields_per_segment: 5, max_repetitions: 1, max_message_bytes: 128 };
        if let Ok(m) = Message::parse_with(&bytes, &tight) {
            walk(&m);
        }
    }
}

#[test]
fn samples_are_valid() {
    for s in SAMPLES {
        let m = Message::parse(s.as_bytes()).expect("sample parses");
        assert!(m.validate_header().is_ok());
        assert!(walk(&m) > 0);
    }
}

#[test]
fn ack_timestamps_are_fourteen_digits_and_the_offset() {
    use time::macros::datetime;
    assert_eq!(hl7_timestamp(datetime!(2026-12-03 04:05:06 UTC)), "20261203040506+0000");
    assert_eq!(hl7_timestamp(datetime!(0987-01-31 23:59:59 +05:30)), "09870131235959+0530");
    assert_eq!(hl7_timestamp(datetime!(2026-07-01 00:00:00 -03:30)), "20260701000000-0330");
    assert_eq!(hl7_timestamp(datetime!(2026-07-01 00:00:00 -00:30)), "20260701000000-0030");
    assert_eq!(hl7_timestamp(datetime!(-0001-03-04 05:06:07 UTC)), "-0010304050607+0000");
}
