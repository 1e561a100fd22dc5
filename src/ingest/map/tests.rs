use time::macros::datetime;
use time::{OffsetDateTime, UtcOffset};
use vigil_actors::{CensusAction, EventKind, OrderAction, ResultStatus};

use super::*;
use crate::ingest::hl7::Message;

fn mapper() -> Mapper {
    Mapper::new(Vocabulary::shipped(), BlindIndex::new(&[7; 32]))
}

#[test]
fn dtm_with_and_without_offset_and_fraction() {
    let utc = UtcOffset::UTC;
    assert_eq!(parse_dtm("20260102030405+0100", utc), Some(datetime!(2026-01-02 03:04:05 +01:00)));
    assert_eq!(parse_dtm("202601020304", utc), Some(datetime!(2026-01-02 03:04 UTC)));
    assert_eq!(parse_dtm("20260102030405.25-0500", utc), Some(datetime!(2026-01-02 03:04:05.25 -05:00)));
    assert_eq!(parse_dtm("20260102", utc), Some(datetime!(2026-01-02 00:00 UTC)));
    for bad in ["", "2026", "20261302", "20260102250000", "2026010203040", "20260102+01", "abc"] {
        assert_eq!(parse_dtm(bad, utc), None, "{bad}");
    }
}

#[test]
fn pcd01_vitals_map_to_canonical_observations_with_mr_identity() {
    let msg = "MSH|^~\\&|MON|ICU|VIGIL|HOSP|20260102030405+0000||ORU^R01^ORU_R01|C1|P|2.6|||AL|NE\r\
PID|||X9^^^OTHER^PI~123456^^^HOSP^MR||Doe^Jane||19500101|F\r\
PV1||I|ICU^12^B\r\
OBR|1|||182777000^monitoring^SCT|||20260102030400+0000\r\
OBX|1||69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|1|||||||X\r\
OBX|2|NM|151562^MDC_RESP_RATE^MDC|1.2.1.1|24|264928^MDC_DIM_RESP_PER_MIN^MDC|||||R|||20260102030401+0000||||DEV1\r\
OBX|3|NM|150344^MDC_TEMP^MDC|1.5.1.1|101.3|266560^MDC_DIM_FAHR^MDC|||||R\r\
OBX|4|NM|150021^MDC_PRESS_BLD_NONINV_SYS^MDC|1.4.1.1|95|266016^MDC_DIM_MMHG^MDC|||||W\r\
OBX|5|NM|99999^UNKNOWN^MDC||5\r\
OBX|6|NM|8867-4^HR^LN||oops\r";
    let msg = Message::parse(msg.as_bytes()).unwrap();
    let events = mapper().oru_r01(&msg, OffsetDateTime::now_utc()).unwrap();
    let event = &events[0];
    assert_eq!(event.patient.mrn.expose(), "123456");
    assert_eq!(event.patient.authority, "HOSP");
    assert_eq!(event.demographics.name.expose(), "Doe, Jane");
    assert_eq!(event.location.as_ref().map(|l| l.bed.as_str()), Some("B"));
    let EventKind::Observations { observations } = &event.kind else { panic!("not observations") };
    let got: Vec<_> =
        observations.iter().map(|o| (o.name.as_str(), (o.value.unwrap() * 10.0).round() / 10.0)).collect();
    assert_eq!(got, vec![("rr", 24.0), ("temp", 38.5)], "wrong, unknown and non-numeric rows are left out");
    assert_eq!(observations[0].observed_at, datetime!(2026-01-02 03:04:01 UTC));
    assert_eq!(observations[0].device.as_deref(), Some("DEV1"));
    assert_eq!(observations[1].observed_at, datetime!(2026-01-02 03:04:00 UTC), "OBR-7 when OBX-14 is empty");
}

#[test]
fn labs_keep_status_key_range_flags_and_convert_per_analyte() {
    let msg = "MSH|^~\\&|LIS|HOSP|VIGIL|HOSP|20260102030405||ORU^R01|L1|P|2.5.1\r\
PID|||55^^^HOSP^MR\r\
OBR|1|PL1|FL1|80048^BMP^CPT|||20260102020000\r\
OBX|1|NM|2345-7^Glucose^LN|1|5.5|mmol/L|3.9-5.5|H|||C\r\
OBX|2|NM|2160-0^Creatinine^LN|1|1.2|mmol/L|||||F\r\
OBX|3|SN|2524-7^Lactate^LN||>^10|mmol/L||HH~A|||F|||20260102021500\r\
OBX|4|CWE|67775-7^Level of consciousness^LN||V^Voice^ACVPU||||||F\r\
OBX|5|NM|2823-3^Potassium^LN||||||||D\r\
OBX|6|NM|LOCALK^K^99LAB^6298-4^Potassium^LN||4.1|mEq/L|||||P\r";
    let msg = Message::parse(msg.as_bytes()).unwrap();
    let events = mapper()
        .with_default_offset(UtcOffset::from_hms(1, 0, 0).unwrap())
        .oru_r01(&msg, OffsetDateTime::now_utc())
        .unwrap();
    let EventKind::Observations { observations } = &events[0].kind else { panic!() };
    let names: Vec<_> = observations.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(
        names,
        ["glucose", "lactate", "consciousness", "potassium", "potassium"],
        "creatinine in mmol/L is dropped"
    );
    let glucose = &observations[0];
    assert!((glucose.value.unwrap() - 99.088).abs() < 0.01);
    assert_eq!(glucose.status, ResultStatus::Corrected);
    assert_eq!(glucose.result_key, "FL1|2345-7|1");
    assert_eq!(glucose.reference_range.as_deref(), Some("70.2624-99.088"));
    assert_eq!(glucose.abnormal_flags, ["H"]);
    assert_eq!(glucose.observed_at, datetime!(2026-01-02 02:00 +01:00));
    let lactate = &observations[1];
    assert_eq!((lactate.value, lactate.text.as_deref()), (Some(10.0), Some(">10")));
    assert_eq!(lactate.abnormal_flags, ["HH", "A"]);
    assert_eq!(lactate.observed_at, datetime!(2026-01-02 02:15 +01:00));
    assert_eq!((observations[2].value, observations[2].text.as_deref()), (None, Some("V")));
    assert_eq!((observations[3].status, observations[3].value), (ResultStatus::Deleted, None));
    assert_eq!(
        (observations[4].status, observations[4].value, observations[4].source_code.as_str()),
        (ResultStatus::Preliminary, Some(4.1), "LN|6298-4")
    );
}

#[test]
fn missing_identity_and_pid_are_located_errors() {
    let msg = Message::parse(b"MSH|^~\\&|A|B|C|D|20260101||ORU^R01|C2|P|2.6\rPID|||\r").unwrap();
    let err = mapper().oru_r01(&msg, OffsetDateTime::now_utc()).unwrap_err();
    assert_eq!((err.segment, err.field, err.code), ("PID", 3, 101));
    let msg = Message::parse(b"MSH|^~\\&|A|B|C|D|20260101||ORU^R01|C2|P|2.6\rPID|||777^^^HOSP^SS\r").unwrap();
    assert_eq!(mapper().oru_r01(&msg, OffsetDateTime::now_utc()).unwrap_err().field, 3, "an SSN is never the MRN");
    let msg = Message::parse(b"MSH|^~\\&|A|B|C|D|20260101||ORU^R01|C2|P|2.6\rOBX|1|NM|151562^RR^MDC||20\r").unwrap();
    let err = mapper().oru_r01(&msg, OffsetDateTime::now_utc()).unwrap_err();
    assert_eq!(
        (err.segment, err.field, err.code, err.to_string().as_str()),
        ("PID", 0, 100, "PID segment is required")
    );
}

#[test]
fn adt_census_with_allergies_cancel_transfer_and_merge() {
    let msg = "MSH|^~\\&|EMR|HOSP|VIGIL|HOSP|20260102||ADT^A01|A1|P|2.5\r\
PID|||9^^^HOSP^MR\r\
PV1||I|ICU^3^A||||D123^House||||||||||||V77\r\
AL1|1|DA|70618^Penicillin^RxNorm|SV|hives\r";
    let events = mapper()
        .adt_census(&Message::parse(msg.as_bytes()).unwrap(), CensusAction::Admit, OffsetDateTime::now_utc())
        .unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(
        events[0].kind,
        EventKind::Census {
            action: CensusAction::Admit,
            attending: Some("D123".into()),
            encounter: Some("V77".into())
        }
    );
    assert_eq!(events[0].location.as_ref().map(|l| (l.unit.as_str(), l.bed.as_str())), Some(("ICU", "A")));
    let EventKind::Allergies { allergies, replace } = &events[1].kind else { panic!() };
    assert!(!replace);
    assert_eq!((allergies[0].name.as_str(), allergies[0].code.as_deref()), ("penicillin", Some("RXNORM|70618")));

    let msg =
        "MSH|^~\\&|EMR|HOSP|VIGIL|HOSP|20260102||ADT^A12|A2|P|2.5\rPID|||9^^^HOSP^MR\rPV1||I|ICU^3^A|||WARD^1^B\r";
    let events = mapper()
        .adt_census(&Message::parse(msg.as_bytes()).unwrap(), CensusAction::CancelTransfer, OffsetDateTime::now_utc())
        .unwrap();
    assert_eq!(events[0].location.as_ref().map(|l| l.unit.as_str()), Some("WARD"));

    let msg =
        "MSH|^~\\&|EMR|HOSP|VIGIL|HOSP|20260102||ADT^A40|M1|P|2.5\rPID|||9^^^HOSP^MR\rMRG|8^^^HOSP^PI~8b^^^HOSP^MR\r";
    let events = mapper().adt_merge(&Message::parse(msg.as_bytes()).unwrap(), OffsetDateTime::now_utc()).unwrap();
    let EventKind::Merge { prior, prior_id } = &events[0].kind else { panic!() };
    assert_eq!(prior.mrn.expose(), "8b");
    assert_eq!(*prior_id, BlindIndex::new(&[7; 32]).patient_id("HOSP", "8b"));
}

#[test]
fn orders_and_administrations() {
    let msg = "MSH|^~\\&|RX|HOSP|VIGIL|HOSP|20260102||RDE^O11|R1|P|2.5\rPID|||9^^^HOSP^MR\r\
ORC|NW|P100\rRXE|^^^20260102|723^Amoxicillin 500 MG Oral Tablet^RXNORM\r\
ORC|SC|P101\rRXE|^^^20260102|1^Other^RXNORM\r\
ORC|DC||F200\rRXE|^^^20260102|LOC9^Vancomycin 1 g IV^L^11124^vancomycin^RxNorm\r";
    let events =
        mapper().pharmacy_order(&Message::parse(msg.as_bytes()).unwrap(), "RXE", 2, OffsetDateTime::now_utc()).unwrap();
    let got: Vec<_> = events
        .iter()
        .map(|e| match &e.kind {
            EventKind::MedicationOrder { action, medication } => {
                (*action, medication.order_id.clone(), medication.rxnorm.clone(), medication.name.clone())
            }
            _ => panic!(),
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (OrderAction::New, "P100".into(), Some("723".into()), "amoxicillin".into()),
            (OrderAction::Discontinue, "F200".into(), Some("11124".into()), "vancomycin".into()),
        ]
    );
    let msg = "MSH|^~\\&|RX|HOSP|VIGIL|HOSP|20260102||RAS^O17|S1|P|2.5\rPID|||9^^^HOSP^MR\rORC|RE|P100\r\
RXA|0|1|202601020800+0000||723^Amoxicillin^RXNORM|500|mg\rRXA|0|2|202601021400+0000||723^Amoxicillin^RXNORM|500|mg|||||||||||||RE\r";
    let events = mapper().ras_o17(&Message::parse(msg.as_bytes()).unwrap(), OffsetDateTime::now_utc()).unwrap();
    assert_eq!(events.len(), 1, "a refused dose is not an administration");
    let EventKind::Administration { medication, given_at } = &events[0].kind else { panic!() };
    assert_eq!((medication.order_id.as_str(), *given_at), ("P100", datetime!(2026-01-02 08:00 UTC)));
}

/// The data-driven table of src/ingest/map/observation_cases.json: each OBX maps to the listed
/// canonical value (and critical limit), or is dropped and counted for the listed reason, and
/// never takes the rest of its message with it.
#[test]
fn observation_cases_map_or_drop_as_listed() {
    let table: serde_json::Value = serde_json::from_str(include_str!("observation_cases.json")).unwrap();
    let rules_data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules").join("data");
    let tables = crate::rules::data::Tables::load(&rules_data).unwrap();
    let cases = table["cases"].as_array().unwrap();
    assert!(cases.len() > 50, "the table lost its cases");
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let text = |key: &str| case[key].as_str().unwrap_or_default().to_string();
        let name = text("name");
        let msg = format!(
            "MSH|^~\\&|LIS|HOSP|VIGIL|HOSP|20260102030405||ORU^R01|OC{i}|P|2.5.1\rPID|||55^^^HOSP^MR\rOBR|1||FL1|X|||20260102020000\r\
OBX|1|{}|{}|1|{}|{}|||||F\rOBX|2|NM|8867-4^HR^LN|1|72|/min|||||F\r",
            text("type"),
            text("code"),
            text("value"),
            text("unit")
        );
        let mapper = mapper();
        let events = mapper.oru_r01(&Message::parse(msg.as_bytes()).unwrap(), OffsetDateTime::now_utc()).unwrap();
        let EventKind::Observations { observations } = &events[0].kind else { panic!("{name}: not observations") };
        let Some((last, rest)) = observations.split_last() else {
            failures.push(format!("{name}: nothing mapped"));
            continue;
        };
        if (last.name.as_str(), last.value) != ("hr", Some(72.0)) {
            failures.push(format!("{name}: the rest of the message was lost"));
        }
        match (&case["expect"], &case["dropped"]) {
            (serde_json::Value::Object(expect), _) => {
                let [got] = rest else {
                    failures.push(format!("{name}: expected one observation, got {}", rest.len()));
                    continue;
                };
                if expect.get("name").and_then(|v| v.as_str()) != Some(got.name.as_str()) {
                    failures.push(format!("{name}: mapped to {:?}", got.name));
                }
                if let Some(want) = expect.get("value").and_then(|v| v.as_f64())
                    && !got.value.is_some_and(|v| (v - want).abs() < 0.01)
                {
                    failures.push(format!("{name}: value {:?}, want {want}", got.value));
                }
                if let Some(want) = expect.get("text").and_then(|v| v.as_str())
                    && got.text.as_deref() != Some(want)
                {
                    failures.push(format!("{name}: text {:?}, want {want:?}", got.text));
                }
                if let Some(want) = case.get("critical") {
                    let limits = tables.critical_limits().iter().find(|l| l.analyte == got.name);
                    let broken = limits.and_then(|l| l.broken(got.value.unwrap_or(f64::NAN)));
                    if broken.as_deref() != want.as_str() {
                        failures.push(format!("{name}: critical {broken:?}, want {want}"));
                    }
                }
                if mapper.dropped().nonzero().iter().any(|(n, _, _)| *n == got.name) {
                    failures.push(format!("{name}: counted as dropped"));
                }
            }
            (_, serde_json::Value::Object(dropped)) => {
                if !rest.is_empty() {
                    failures.push(format!(
                        "{name}: not dropped: {:?} {:?} {:?}",
                        rest[0].name, rest[0].value, rest[0].text
                    ));
                }
                let analyte = dropped["analyte"].as_str().unwrap_or_default();
                let reason = dropped["reason"].as_str().unwrap_or_default();
                let counted = mapper.dropped().nonzero();
                if counted.iter().map(|(n, r, c)| (*n, r.label(), *c)).collect::<Vec<_>>() != [(analyte, reason, 1)] {
                    failures.push(format!(
                        "{name}: counted {:?}, want {analyte} {reason}",
                        counted.iter().map(|(n, r, c)| (*n, r.label(), *c)).collect::<Vec<_>>()
                    ));
                }
            }
            _ if case["ignored"] == serde_json::Value::Bool(true) => {
                if !rest.is_empty() || !mapper.dropped().nonzero().is_empty() {
                    failures.push(format!("{name}: an unmapped code must be left out without counting"));
                }
            }
            _ => failures.push(format!("{name}: a case needs `expect`, `dropped` or `ignored`")),
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

#[test]
fn dropped_values_are_counted_per_analyte_and_reason_and_the_message_is_kept() {
    let msg = "MSH|^~\\&|MON|ICU|VIGIL|HOSP|20260102030405+0000||ORU^R01|D1|P|2.6\rPID|||9^^^HOSP^MR\r\
OBX|1|NM|150344^MDC_TEMP^MDC|1|101.3|||||R\r\
OBX|2|NM|150344^MDC_TEMP^MDC|2|101.3|268192^MDC_DIM_DEGC^MDC|||||R\r\
OBX|3|NM|3150-0^FiO2^LN|1|0.4|%|||||F\r\
OBX|4|ST|67775-7^LOC^LN|1|sleepy||||||F\r\
OBX|5|NM|151562^MDC_RESP_RATE^MDC|1|18|264928^MDC_DIM_RESP_PER_MIN^MDC|||||R\r\
OBX|6|NM|3150-0^FiO2^LN|2|0.4||||||F\r";
    let mapper = mapper();
    let events = mapper.oru_r01(&Message::parse(msg.as_bytes()).unwrap(), OffsetDateTime::now_utc()).unwrap();
    let EventKind::Observations { observations } = &events[0].kind else { panic!() };
    let got: Vec<_> = observations.iter().map(|o| (o.name.as_str(), o.value)).collect();
    assert_eq!(got, [("rr", Some(18.0)), ("fio2", Some(40.0))], "the usable rows survive the dropped ones");
    use crate::vocab::DropReason;
    let d = mapper.dropped();
    assert_eq!(d.get("temp", DropReason::UnitMissing), 1);
    assert_eq!(d.get("temp", DropReason::Implausible), 1);
    assert_eq!(d.get("fio2", DropReason::Implausible), 1);
    assert_eq!(d.get("consciousness", DropReason::UnknownAnswer), 1);
    assert_eq!(d.get("rr", DropReason::Implausible), 0);
    assert_eq!(d.nonzero().len(), 4);
}

#[test]
fn an_assigning_authority_with_an_iso_oid_is_its_urn_and_a_namespace_is_kept() {
    let pid = |cx: &str| format!("MSH|^~\\&|A|B|C|D|20260101||ORU^R01|C3|P|2.6\rPID|||{cx}\r");
    let key = |m: &Mapper, cx: &str| {
        let msg = Message::parse(pid(cx).as_bytes()).unwrap();
        m.oru_r01(&msg, OffsetDateTime::now_utc()).unwrap().remove(0).patient
    };
    let plain = mapper();
    assert_eq!(key(&plain, "77^^^HOSP^MR").authority, "HOSP", "a namespace-only authority keeps its id");
    assert_eq!(key(&plain, "77^^^HOSP&1.2.840.99&ISO^MR").authority, "urn:oid:1.2.840.99");
    assert_eq!(key(&plain, "77^^^&1.2.840.99&ISO^MR").authority, "urn:oid:1.2.840.99");
    let table = [("HOSP".to_string(), "urn:oid:1.2.840.99".to_string())].into_iter().collect();
    let configured = mapper().with_authorities(Authorities::new(&table).unwrap());
    assert_eq!(key(&configured, "77^^^HOSP&1.2.840.99&ISO^MR").authority, "HOSP");
    assert_eq!(key(&configured, "77^^^HOSP^MR").authority, "HOSP");
}
