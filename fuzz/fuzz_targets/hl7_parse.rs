//! Parse arbitrary bytes as HL7 v2. Must never panic. When parsing succeeds, every accessor
//! is exercised on every segment, field, repetition, component and subcomponent, and the ACK
//! built from the message must itself parse and echo MSH-10 in MSA-2. Independently of the
//! parse result, `AckHeader::fallback` must cope with the same bytes and its ACK must parse.
#![no_main]

use std::hint::black_box;

use libfuzzer_sys::fuzz_target;
use vigil::ingest::hl7::{
    AckCode, AckError, AckHeader, Delimiters, ErrLocation, ErrSeverity, Field, Message, Repetition,
    Segment, Value, build_ack, escape, unescape, unescape_with,
};

const TS: &str = "20250101000000+0000";

fuzz_target!(|data: &[u8]| {
    match Message::parse(data) {
        Ok(msg) => {
            walk_message(&msg);
            let header = AckHeader::from_message(&msg);
            let ack = build_ack(&header, AckCode::AA, &[], "ACK0001", TS, Some("fuzz"));
            check_ack(&ack, &header);
            // With an ERR carrying user text too.
            let err = AckError::new(207, ErrSeverity::Error, msg.control_id()).at(ErrLocation {
                segment: msg.msh().map(|s| s.name().to_owned()).unwrap_or_default(),
                sequence: 1,
                field: 10,
                component: 1,
            });
            let nak = build_ack(&header, AckCode::AE, &[err], "ACK0002", TS, Some("fuzz"));
            check_ack(&nak, &header);
        }
        Err(e) => {
            black_box(e.to_string());
            black_box(e.kind.ack_code());
            let err = AckError::from_parse_error(&e);
            let header = AckHeader::fallback(data);
            let nak = build_ack(&header, AckCode::AR, &[err], "ACK0003", TS, Some("fuzz"));
            check_ack(&nak, &header);
        }
    }
    // Fallback runs on every input, parseable or not.
    let header = AckHeader::fallback(data);
    let ack = build_ack(&header, AckCode::AE, &[], "ACK0004", TS, Some("fuzz"));
    check_ack(&ack, &header);
});

/// The ACK we send must be a message we ourselves can parse, and MSA-2 must carry the
/// original control id (exactly when the delimiter set can escape; HL7 has no way to carry
/// delimiters without an escape character, so then `escape` substitutes spaces).
fn check_ack(ack: &str, h: &AckHeader) {
    let parsed = Message::parse(ack.as_bytes())
        .unwrap_or_else(|e| panic!("our own ACK does not parse: {e:?}\nACK: {ack:?}\nheader: {h:?}"));
    let msa = parsed
        .segment("MSA")
        .unwrap_or_else(|| panic!("ACK without MSA: {ack:?}"));
    let d = if h.delimiters.validate().is_ok() { h.delimiters } else { Delimiters::default() };
    let expected = if d.has_escape() {
        h.control_id.clone()
    } else {
        escape(&h.control_id, &d).into_owned()
    };
    let got = msa.component(2, 1);
    // The control id is a whole field; a component/subcomponent split of it is escaped, so
    // reading component 1 / sub 1 is the whole value.
    assert_eq!(got, expected, "MSA-2 != MSH-10\nACK: {ack:?}\nheader: {h:?}");
    walk_message(&parsed);
}

fn walk_message(msg: &Message) {
    black_box(msg.delimiters());
    black_box(msg.charset());
    black_box(msg.raw());
    black_box(msg.control_id());
    black_box(msg.message_type());
    black_box(msg.sending_application());
    black_box(msg.sending_facility());
    black_box(msg.receiving_application());
    black_box(msg.receiving_facility());
    black_box(msg.processing_id());
    black_box(msg.version());
    black_box(msg.accept_ack_type());
    black_box(msg.app_ack_type());
    black_box(msg.validate_header().is_ok());
    for e in msg.header_problems() {
        black_box(e.to_string());
        black_box(AckError::from_parse_error(&e));
    }
    black_box(format!("{msg:?}"));
    assert!(msg.msh().is_some(), "a parsed message always has an MSH");
    let segments = msg.segments();
    for seg in segments {
        black_box(msg.segment(seg.name()).is_some());
        black_box(msg.segments_named(seg.name()).count());
        walk_segment(msg, seg);
    }
    black_box(msg.segment("ZZZ"));
}

fn walk_segment(msg: &Message, seg: &Segment) {
    black_box(seg.name());
    black_box(seg.raw());
    let count = seg.field_count();
    assert_eq!(count, seg.fields().len());
    assert!(seg.field(0).is_none());
    assert!(seg.field(count + 1).is_none());
    for n in 0..=count + 1 {
        black_box(seg.text(n));
        black_box(seg.component(n, 1));
        black_box(seg.component(n, 2));
        black_box(seg.is_null(n));
        check_value(seg.value(n, 1, 1, 1));
        check_value(seg.value(n, 2, 3, 4));
        check_value(seg.value(n, 0, 0, 0));
    }
    for field in seg.fields() {
        walk_field(msg, field);
    }
}

fn walk_field(msg: &Message, field: &Field) {
    black_box(field.raw());
    black_box(field.is_null());
    black_box(field.is_empty());
    black_box(field.text());
    black_box(format!("{field:?}"));
    let reps = field.repetition_count();
    assert_eq!(reps, field.repetitions().count(), "repetition_count vs repetitions(): {:?}", field.raw());
    assert!(field.repetition(0).is_none());
    assert!(field.repetition(reps + 1).is_none());
    for (i, rep) in field.repetitions().enumerate() {
        assert_eq!(field.repetition(i + 1).map(|r| r.raw()), Some(rep.raw()));
        check_value(field.value(i + 1, 1, 1));
        walk_repetition(msg, rep);
    }
    black_box(unescape(field.raw(), msg.delimiters()));
    black_box(unescape_with(field.raw(), msg.delimiters(), msg.charset()));
}

fn walk_repetition(msg: &Message, rep: Repetition<'_>) {
    black_box(rep.raw());
    black_box(rep.is_null());
    black_box(format!("{rep:?}"));
    let comps = rep.component_count();
    assert!(rep.component_raw(0).is_none());
    for c in 1..=comps {
        let raw = rep
            .component_raw(c)
            .unwrap_or_else(|| panic!("component {c} of {comps} missing in {:?}", rep.raw()));
        black_box(raw);
        black_box(rep.component(c));
        assert!(rep.sub_raw(c, 0).is_none());
        let mut s = 1;
        while let Some(sub) = rep.sub_raw(c, s) {
            black_box(sub);
            black_box(rep.sub(c, s));
            check_value(rep.value(c, s));
            s += 1;
            if s > 4096 {
                break;
            }
        }
    }
    if comps > 0 {
        assert!(rep.component_raw(comps + 1).is_none(), "component {} beyond count in {:?}", comps + 1, rep.raw());
    }
    check_value(rep.value(comps + 1, 1));
    black_box(unescape(rep.raw(), msg.delimiters()));
}

fn check_value(v: Value<'_>) {
    black_box(v.as_str());
    let (null, empty) = (v.is_null(), v.is_empty());
    assert!(!(null && empty));
    let text = v.clone().into_text();
    assert_eq!(text.is_none(), null || empty);
    black_box(v.into_string());
}
