//! Technical conditions inside device observations: an OBX of a PCD-01 report whose code
//! (OBX-3) or coded value (OBX-5) is an IEEE 11073 MDC event saying a lead, probe, sensor or
//! electrode is off or disconnected. They go to the device actor (`device.technical`), not to
//! the patient's observations. Recognised by the code `196876` (MDC_EVT_LEAD_DISCONN, MDC
//! partition 3 code 268) or by an `MDC_EVT_*` reference id naming such a condition, since
//! monitors differ in which event codes they use.

use vigil_actors::device::TechnicalCondition;

use crate::ingest::hl7::{Message, Segment};

/// MDC event codes known to mean a technical condition of the measurement (`MDC_EVT_LEAD_DISCONN`).
const TECHNICAL_CODES: &[&str] = &["196876"];

/// Whether an MDC reference id (e.g. `MDC_EVT_LEAD_OFF`, `MDC_EVT_PROBE_DISCONN`) names a
/// lead, probe, sensor or electrode that is off or disconnected.
pub fn is_technical_mnemonic(text: &str) -> bool {
    let text = text.trim().to_ascii_uppercase();
    let Some(event) = text.strip_prefix("MDC_EVT_") else { return false };
    let what = ["LEAD", "PROBE", "SENSOR", "ELECTRODE", "ELEC"].iter().any(|w| event.contains(w));
    let off = ["OFF", "DISCONN"].iter().any(|w| event.contains(w));
    what && off
}

/// Whether `code` (with its text) of system `system` names a technical condition.
pub fn is_technical(system: &str, code: &str, text: &str) -> bool {
    let mdc = system.is_empty() || system.eq_ignore_ascii_case("MDC") || system == "urn:iso:std:iso:11073:10101";
    mdc && (TECHNICAL_CODES.contains(&code.trim()) || is_technical_mnemonic(text) || is_technical_mnemonic(code))
}

fn condition_of(obx: &Segment) -> Option<TechnicalCondition> {
    let coded_value = matches!(obx.text(2).as_str(), "CWE" | "CE" | "CNE" | "ST");
    let fields: &[usize] = if coded_value { &[3, 5] } else { &[3] };
    fields.iter().find_map(|&field| {
        let (code, text, system) = (obx.component(field, 1), obx.component(field, 2), obx.component(field, 3));
        // A sender without a numeric code for the event (empty, or 0) is keyed by its name.
        let key = match code.trim() {
            "" | "0" => text.trim(),
            numeric => numeric,
        };
        is_technical(&system, &code, &text).then(|| TechnicalCondition {
            code: format!("MDC|{key}"),
            text: if text.trim().is_empty() { code.trim().to_string() } else { text.trim().to_string() },
            source: obx.text(4).trim().to_string(),
        })
    })
}

/// Whether OBX-3 or OBX-5 as sent could name a technical condition: a field holding
/// neither the event code nor `MDC_EVT_` (in any case) cannot, unless escapes hide text. Every
/// numeric OBX of every report passes here, so this test reads the raw bytes only.
fn may_name_one(obx: &Segment, escape: char) -> bool {
    [3, 5]
        .into_iter()
        .filter_map(|n| obx.field(n))
        .any(|f| !escape.is_ascii() || may_name(f.raw().as_bytes(), escape as u8))
}

/// Whether `raw` holds `escape`, an event code, or `MDC_EVT_` in any case. One pass: only a
/// byte that can start one of them (the escape, an underscore, a code's first digit) is looked
/// at further, and `MDC_EVT_` is found from its underscore, which has no case.
fn may_name(raw: &[u8], escape: u8) -> bool {
    raw.iter().enumerate().any(|(i, &b)| {
        b == escape
            || (b == b'_'
                && i >= 3
                && raw[i - 3..i].eq_ignore_ascii_case(b"MDC")
                && raw.get(i + 1..i + 5).is_some_and(|w| w.eq_ignore_ascii_case(b"EVT_")))
            || TECHNICAL_CODES.iter().any(|c| c.as_bytes()[0] == b && raw[i..].starts_with(c.as_bytes()))
    })
}

/// The technical conditions of a PCD-01 report, each with the device its OBX-18 names (empty:
/// the report's first device).
pub fn technical_conditions(msg: &Message) -> Vec<(String, TechnicalCondition)> {
    let escape = msg.delimiters().escape;
    msg.segments()
        .iter()
        .filter(|s| s.name() == "OBX" && may_name_one(s, escape))
        .filter_map(|obx| condition_of(obx).map(|c| (obx.component(18, 1).trim().to_string(), c)))
        .take(vigil_actors::device::technical::MAX_CONDITIONS * 4)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lead_and_probe_events_are_technical_and_physiologic_codes_are_not() {
        assert!(is_technical("MDC", "196876", "MDC_EVT_LEAD_DISCONN"));
        assert!(is_technical("MDC", "", "MDC_EVT_PROBE_DISCONN"));
        assert!(is_technical("urn:iso:std:iso:11073:10101", "0", "MDC_EVT_LEAD_OFF"));
        assert!(is_technical("MDC", "MDC_EVT_SENSOR_OFF", ""));
        assert!(!is_technical("MDC", "147842", "MDC_ECG_HEART_RATE"));
        assert!(!is_technical("MDC", "196674", "MDC_EVT_LO_VAL_LT_LIM"));
        assert!(!is_technical("LN", "196876", "MDC_EVT_LEAD_DISCONN"), "another system's code");
    }

    #[test]
    fn a_pcd01_obx_with_the_event_as_code_or_as_coded_value_is_found_with_its_device() {
        let raw = [
            "MSH|^~\\&|GW|ICU|VIGIL|HOSP|20260102030405+0000||ORU^R01^ORU_R01|T-1|P|2.6|||AL|NE",
            "OBR|1||T-1^GW|182777000^monitoring of patient^SCT|||20260102030405+0000",
            "OBX|1|NM|147842^MDC_ECG_HEART_RATE^MDC|1.1.1.1|72|264864^MDC_DIM_BEAT_PER_MIN^MDC|||||R|||||||MON-1",
            "OBX|2|ST|196876^MDC_EVT_LEAD_DISCONN^MDC|1.1.1.2|||||||R|||||||MON-1",
            "OBX|3|CWE|68480^MDC_ATTR_ALERT_SOURCE^MDC|1.3.1.9|0^MDC_EVT_PROBE_DISCONN^MDC|||||R",
        ]
        .join("\r");
        let msg = Message::parse(raw.as_bytes()).unwrap();
        let found = technical_conditions(&msg);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].0, "MON-1");
        assert_eq!(found[0].1.code, "MDC|196876");
        assert_eq!(found[0].1.source, "1.1.1.2");
        assert_eq!((found[1].0.as_str(), found[1].1.text.as_str()), ("", "MDC_EVT_PROBE_DISCONN"));
    }

    /// The event codes are digits, so finding them exactly is finding them in any case (as
    /// the window-by-window test before it did), and a byte that is not a digit cannot start one.
    #[test]
    fn technical_codes_are_digits() {
        assert!(TECHNICAL_CODES.iter().all(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit())));
    }

    /// What `may_name` decides, as it was written before the one-pass scan: any window holding
    /// an event code or `MDC_EVT_` in any case, or the escape character anywhere.
    fn may_name_by_windows(raw: &[u8], escape: u8) -> bool {
        let has = |needle: &[u8]| raw.windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle));
        raw.contains(&escape) || TECHNICAL_CODES.iter().any(|c| has(c.as_bytes())) || has(b"MDC_EVT_")
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(20_000))]
        /// Over texts made of the names' letters in both cases, underscores, digits of the code
        /// and others.
        #[test]
        fn one_pass_agrees_with_every_window(raw in proptest::collection::vec(
            proptest::sample::select(b"MDCEVTmdcevt__^|196876x\\".to_vec()), 0..40)) {
            proptest::prop_assert_eq!(may_name(&raw, b'\\'), may_name_by_windows(&raw, b'\\'));
            proptest::prop_assert_eq!(may_name(&raw, b'#'), may_name_by_windows(&raw, b'#'));
        }

        /// The same around the names themselves: `MDC_EVT_` in mixed case and the event code,
        /// either with one byte changed, between random texts.
        #[test]
        fn names_in_any_case_or_nearly_are_judged_as_every_window_would(
            before in proptest::collection::vec(proptest::sample::select(b"MDC_EVT^x19".to_vec()), 0..12),
            upper in proptest::bits::u8::ANY,
            code in proptest::bool::ANY,
            changed in proptest::option::of((0usize..8, proptest::sample::select(b"_CXe^7".to_vec()))),
            after in proptest::collection::vec(proptest::sample::select(b"MDC_EVT^x68".to_vec()), 0..12),
        ) {
            let mut name: Vec<u8> = if code {
                TECHNICAL_CODES[0].as_bytes().to_vec()
            } else {
                b"mdc_evt_".iter().enumerate()
                    .map(|(i, b)| if upper & (1 << i) != 0 { b.to_ascii_uppercase() } else { *b })
                    .collect()
            };
            if let Some((at, byte)) = changed {
                let at = at % name.len();
                name[at] = byte;
            }
            let raw = [before, name, after].concat();
            proptest::prop_assert_eq!(may_name(&raw, b'\\'), may_name_by_windows(&raw, b'\\'));
        }
    }
}
