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
    let limits = ParseLimits { max_segments: 2, max_fields_per_segment: 3, max_repetitions: 2, max_message_bytes: 200 };
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

proptest::proptest! {
    /// The one-pass lookup (`locate`) finds what splitting level by level finds (repetition,
    /// then component, then subcomponent), for every position, including past the end, and
    /// with the subcomponent or repetition delimiter left undeclared.
    #[test]
    fn one_pass_lookup_agrees_with_splitting_each_level(
        field in "[a-c~^&\\\\]{0,24}",
        encoding in proptest::sample::select(vec!["^~\\&", "^~\\", "^"]),
        rep in 0usize..4, comp in 0usize..5, sub in 0usize..4,
    ) {
        let m = msg(&format!("MSH|{encoding}|A|B|C|D|||ORU^R01|1|P|2.6\rOBX|1||{field}\r"));
        let d = *m.delimiters();
        let obx = m.segment("OBX").expect("obx");
        let split = || -> Option<&str> {
            let r = nth_part(&field, d.repetition, rep)?;
            nth_part(nth_part(r, d.component, comp)?, d.subcomponent, sub)
        };
        let expected = match split() {
            None | Some("") => Value::Empty,
            Some(v) => leaf_value(v, &m.shared),
        };
        proptest::prop_assert_eq!(obx.value(3, rep, comp, sub), expected.clone());
        if rep == 1 {
            let first = obx.field(3).and_then(|f| f.repetition(1));
            proptest::prop_assert_eq!(first.map_or(Value::Empty, |r| r.value(comp, sub)), expected);
        }
    }
}
