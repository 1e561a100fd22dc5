use serde_json::{Value, json};
use time::OffsetDateTime;
use time::macros::datetime;
use vigil_actors::{CensusAction, EventKind, OrderAction, ResultStatus};

use super::*;
use crate::crypto::BlindIndex;
use crate::ingest::hl7::Message;
use crate::ingest::map::Authorities;
use crate::vocab::Vocabulary;

const HOSP: &str = "http://hospital.example.org/mrn";

fn mapper() -> Mapper {
    let table = [("HOSP".to_string(), HOSP.to_string())].into_iter().collect();
    Mapper::new(Vocabulary::shipped(), BlindIndex::new(&[7; 32])).with_authorities(Authorities::new(&table).unwrap())
}

fn run(m: &Mapper, f: MapFn, resource: &Value) -> Result<Mapped, Vec<Issue>> {
    let referenced = Referenced::default();
    let ctx = Context { mapper: m, received_at: datetime!(2026-01-02 03:00 UTC), referenced: &referenced };
    let kind = resource["resourceType"].as_str().unwrap();
    f(&ctx, &El::root(resource, kind))
}

fn observations(mapped: &Mapped) -> &[Observation] {
    match &mapped.events[0].kind {
        EventKind::Observations { observations } => observations,
        other => panic!("not observations: {other:?}"),
    }
}

fn subject() -> Value {
    json!({ "reference": format!("Patient?identifier={HOSP}|MRN-1") })
}

#[test]
fn a_phd_blood_pressure_panel_maps_its_components_with_the_eui64_device() {
    let bp = json!({
        "resourceType": "Observation",
        "status": "final",
        "code": { "coding": [
            { "system": "urn:iso:std:iso:11073:10101", "code": "150020" },
            { "system": "http://loinc.org", "code": "85354-9" } ] },
        "subject": subject(),
        "effectiveDateTime": "2026-01-02T02:59:00+01:00",
        "device": { "reference": "#d1" },
        "contained": [{ "resourceType": "Device", "id": "d1", "identifier": [
            { "system": EUI64_SYSTEM, "value": "71-10-00-fe-ff-5f-49-b0" } ] }],
        "identifier": [{ "system": "urn:ietf:rfc:3986", "value": "urn:uuid:0f6c7d35" }],
        "component": [
            { "code": { "coding": [{ "system": "urn:iso:std:iso:11073:10101", "code": "150021" }] },
              "valueQuantity": { "value": 92, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]" } },
            { "code": { "coding": [{ "system": "http://loinc.org", "code": "8462-4" }] },
              "valueQuantity": { "value": 8, "unit": "kPa" } },
            { "code": { "coding": [{ "system": "urn:iso:std:iso:11073:10101", "code": "150023" }] },
              "valueQuantity": { "value": 70, "code": "266016", "system": "urn:iso:std:iso:11073:10101" } },
            { "code": { "coding": [{ "system": "http://example.org/local", "code": "x" }] }, "valueString": "n/a" }
        ]
    });
    let m = mapper();
    let mapped = run(&m, observation, &bp).unwrap();
    let event = &mapped.events[0];
    assert_eq!(event.patient.authority, "HOSP", "the configured system is the HL7 namespace");
    assert_eq!(event.patient.mrn.expose(), "MRN-1");
    let got: Vec<_> = observations(&mapped).iter().map(|o| (o.name.as_str(), o.value.map(|v| v.round()))).collect();
    assert_eq!(got, [("sbp", Some(92.0)), ("dbp", Some(60.0)), ("map", Some(70.0))]);
    let sbp = &observations(&mapped)[0];
    assert_eq!(sbp.device.as_deref(), Some("711000FEFF5F49B0"), "EUI-64 as PCD-01 carries it in OBX-18");
    assert_eq!(sbp.observed_at, datetime!(2026-01-02 01:59 UTC));
    assert_eq!(sbp.source_code, "urn:iso:std:iso:11073:10101|150021");
    assert_eq!(sbp.result_key, "urn:ietf:rfc:3986|urn:uuid:0f6c7d35|urn:iso:std:iso:11073:10101|150021");
    assert!(mapped.issues.is_empty(), "{:?}", mapped.issues);
}

#[test]
fn the_same_patient_over_hl7_and_fhir_is_one_patient_id() {
    let m = mapper();
    let oru = "MSH|^~\\&|MON|ICU|VIGIL|HOSP|20260102030405+0000||ORU^R01|C1|P|2.6\rPID|||MRN-1^^^HOSP^MR\r\
OBX|1|NM|151562^MDC_RESP_RATE^MDC|1|24|264928^MDC_DIM_RESP_PER_MIN^MDC|||||R\r";
    let hl7 = m.oru_r01(&Message::parse(oru.as_bytes()).unwrap(), OffsetDateTime::now_utc()).unwrap();
    let rr = json!({ "resourceType": "Observation", "status": "final", "subject": subject(),
        "code": { "coding": [{ "system": "http://loinc.org", "code": "9279-1" }] },
        "valueQuantity": { "value": 24, "unit": "/min" } });
    let fhir = run(&m, observation, &rr).unwrap();
    assert_eq!(hl7[0].patient_id, fhir.events[0].patient_id);
    let by_identifier = json!({ "resourceType": "Observation", "status": "final",
        "subject": { "identifier": { "system": HOSP, "value": "MRN-1" } },
        "code": { "coding": [{ "system": "http://loinc.org", "code": "9279-1" }] },
        "valueQuantity": { "value": 24, "unit": "/min" } });
    assert_eq!(run(&m, observation, &by_identifier).unwrap().events[0].patient_id, hl7[0].patient_id);
    let oid_oru = oru.replace("MRN-1^^^HOSP^MR", "MRN-1^^^LAB&1.2.840.99&ISO^MR");
    let hl7_oid = m.oru_r01(&Message::parse(oid_oru.as_bytes()).unwrap(), OffsetDateTime::now_utc()).unwrap();
    let mut oid = by_identifier.clone();
    oid["subject"]["identifier"]["system"] = json!("urn:oid:1.2.840.99");
    assert_eq!(run(&m, observation, &oid).unwrap().events[0].patient_id, hl7_oid[0].patient_id);
}

#[test]
fn a_subject_that_cannot_be_resolved_is_refused_naming_the_element() {
    let m = mapper();
    let base = json!({ "resourceType": "Observation", "status": "final",
        "code": { "coding": [{ "system": "http://loinc.org", "code": "9279-1" }] },
        "valueQuantity": { "value": 24, "unit": "/min" } });
    for (subject, path) in [
        (
            json!({ "identifier": { "system": "http://unknown.example.org/ids", "value": "1" } }),
            "Observation.subject.identifier.system",
        ),
        (json!({ "identifier": { "value": "1" } }), "Observation.subject.identifier.system"),
        (json!({ "reference": "Patient?identifier=MRN-1" }), "Observation.subject.reference"),
        (json!({ "reference": "Patient/123" }), "Observation.subject.reference"),
        (json!({ "reference": "#nope" }), "Observation.subject.reference"),
        (json!({ "display": "someone" }), "Observation.subject.reference"),
    ] {
        let mut obs = base.clone();
        obs["subject"] = subject.clone();
        let issues = run(&m, observation, &obs).unwrap_err();
        assert_eq!(issues[0].expression, path, "{subject}");
        assert!(!issues[0].diagnostics.contains("MRN-1"), "no identifier value in a diagnostic");
    }
    let issues = run(&m, observation, &base).unwrap_err();
    assert_eq!((issues[0].code, issues[0].expression.as_str()), ("required", "Observation.subject"));
}

#[test]
fn values_that_cannot_be_used_are_warned_and_an_observation_with_none_usable_is_refused() {
    let m = mapper();
    let obs = |value: Value| {
        let mut o = json!({ "resourceType": "Observation", "status": "final", "subject": subject(),
            "code": { "coding": [{ "system": "http://loinc.org", "code": "8310-5" }] } });
        o.as_object_mut().unwrap().extend(value.as_object().unwrap().clone());
        o
    };
    let f = run(&m, observation, &obs(json!({ "valueQuantity": { "value": 101.3, "unit": "[degF]" } }))).unwrap();
    assert!((observations(&f)[0].value.unwrap() - 38.5).abs() < 0.01, "Fahrenheit converted as for HL7");
    let issues = run(&m, observation, &obs(json!({ "valueQuantity": { "value": 38.5 } }))).unwrap_err();
    assert_eq!(issues[0].expression, "Observation.valueQuantity.unit");
    assert!(issues[0].diagnostics.contains("more than one unit"), "{}", issues[0].diagnostics);
    let issues =
        run(&m, observation, &obs(json!({ "valueQuantity": { "value": 38.5, "unit": "furlongs" } }))).unwrap_err();
    assert_eq!(issues[0].expression, "Observation.valueQuantity.unit");
    let issues = run(&m, observation, &obs(json!({ "valueQuantity": { "value": 101.3, "unit": "Cel" } }))).unwrap_err();
    assert_eq!(issues[0].expression, "Observation.valueQuantity.value");
    let issues =
        run(&m, observation, &obs(json!({ "valueQuantity": { "value": "38.5", "unit": "Cel" } }))).unwrap_err();
    assert_eq!((issues[0].code, issues[0].expression.as_str()), ("invalid", "Observation.valueQuantity.value"));
    assert_eq!(m.dropped().get("temp", crate::vocab::DropReason::UnitMissing), 1, "counted as HL7 drops are");
    let absent =
        run(&m, observation, &obs(json!({ "dataAbsentReason": { "coding": [{ "code": "asked-unknown" }] } }))).unwrap();
    assert!(absent.events.is_empty() && absent.issues[0].diagnostics.contains("data absent"));
    let mut panel = obs(json!({}));
    panel["component"] = json!([
        { "code": { "coding": [{ "system": "http://loinc.org", "code": "8480-6" }] }, "valueQuantity": { "value": 120, "unit": "mm[Hg]" } },
        { "code": { "coding": [{ "system": "http://loinc.org", "code": "8462-4" }] }, "valueQuantity": { "value": 80, "unit": "[degF]" } }
    ]);
    let partial = run(&m, observation, &panel).unwrap();
    assert_eq!(observations(&partial).len(), 1, "the usable component is kept");
    assert_eq!(partial.issues[0].expression, "Observation.component[1].valueQuantity.unit");
}

#[test]
fn status_code_and_answers_map_as_hl7_does() {
    let m = mapper();
    let loc = json!({ "resourceType": "Observation", "status": "amended", "subject": subject(),
        "code": { "coding": [{ "system": "http://loinc.org", "code": "67775-7" }] },
        "valueCodeableConcept": { "coding": [{ "system": "http://loinc.org", "code": "LA17108-4", "display": "Verbal" }] },
        "interpretation": [{ "coding": [{ "code": "A" }] }] });
    let mapped = run(&m, observation, &loc).unwrap();
    let o = &observations(&mapped)[0];
    assert_eq!((o.text.as_deref(), o.status), (Some("V"), ResultStatus::Corrected));
    assert_eq!(o.abnormal_flags, ["A"]);
    let mut cancelled = loc.clone();
    cancelled["status"] = json!("cancelled");
    assert!(run(&m, observation, &cancelled).unwrap().events.is_empty());
    let mut bad = loc.clone();
    bad["status"] = json!("done");
    assert_eq!(run(&m, observation, &bad).unwrap_err()[0].expression, "Observation.status");
    let unknown_code = json!({ "resourceType": "Observation", "status": "final", "subject": subject(),
        "code": { "coding": [{ "system": "http://loinc.org", "code": "29463-7" }] }, "valueQuantity": { "value": 70, "unit": "kg" },
        "note": [{ "text": "elements Vigil does not read are ignored" }], "bodySite": { "text": "arm" } });
    let ignored = run(&m, observation, &unknown_code).unwrap();
    assert!(ignored.events.is_empty() && ignored.issues[0].diagnostics.contains("nothing stored"));
}

#[test]
fn patient_encounter_orders_and_allergies_map_to_the_existing_event_kinds() {
    let m = mapper();
    let patient = json!({ "resourceType": "Patient", "identifier": [
            { "type": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "SS" }] }, "system": HOSP, "value": "999" },
            { "type": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR" }] }, "system": HOSP, "value": "MRN-1" } ],
        "name": [{ "family": "Synthetic", "given": ["Pat"] }], "birthDate": "1950-02-03", "gender": "female" });
    let p = run(&m, super::patient, &patient).unwrap();
    assert_eq!(p.events[0].patient.mrn.expose(), "MRN-1", "an SS identifier is never the MRN");
    assert_eq!(p.events[0].demographics.name.expose(), "Synthetic, Pat");
    assert_eq!(p.events[0].demographics.birth_date.expose(), "19500203");
    assert_eq!(p.id.as_deref(), Some(p.events[0].patient_id.0.as_str()), "the logical id is the opaque patient id");

    let enc = json!({ "resourceType": "Encounter", "status": "in-progress", "class": { "code": "IMP" }, "subject": subject(),
        "identifier": [{ "value": "V77" }],
        "location": [
            { "status": "completed", "location": { "display": "ED" } },
            { "status": "active", "location": { "display": "ICU" }, "physicalType": { "coding": [{ "code": "wa" }] } },
            { "status": "active", "location": { "display": "04" }, "physicalType": { "coding": [{ "code": "ro" }] } },
            { "status": "active", "location": { "identifier": { "value": "B" } }, "physicalType": { "coding": [{ "code": "bd" }] } } ] });
    let e = run(&m, encounter, &enc).unwrap();
    assert!(matches!(e.events[0].kind, EventKind::Census { action: CensusAction::Transfer, .. }));
    let l = e.events[0].location.clone().unwrap();
    assert_eq!((l.unit.as_str(), l.room.as_str(), l.bed.as_str()), ("ICU", "04", "B"));
    let mut finished = enc.clone();
    finished["status"] = json!("finished");
    assert!(matches!(
        run(&m, encounter, &finished).unwrap().events[0].kind,
        EventKind::Census { action: CensusAction::Discharge, .. }
    ));

    let order = json!({ "resourceType": "MedicationRequest", "status": "active", "intent": "order", "subject": subject(),
        "identifier": [{ "value": "ORD-1" }],
        "medicationCodeableConcept": { "coding": [{ "system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "36567", "display": "Simvastatin 40 MG Oral Tablet" }] } });
    let o = run(&m, medication_request, &order).unwrap();
    let EventKind::MedicationOrder { action, medication } = &o.events[0].kind else { panic!() };
    assert_eq!(
        (*action, medication.rxnorm.as_deref(), medication.name.as_str()),
        (OrderAction::New, Some("36567"), "simvastatin")
    );
    let mut no_id = order.clone();
    no_id.as_object_mut().unwrap().remove("identifier");
    assert_eq!(run(&m, medication_request, &no_id).unwrap_err()[0].expression, "MedicationRequest.identifier");

    let admin = json!({ "resourceType": "MedicationAdministration", "status": "completed", "subject": subject(),
        "effectiveDateTime": "2026-01-02T02:00:00Z", "request": { "reference": "MedicationRequest/ORD-1" },
        "medicationCodeableConcept": { "text": "Clarithromycin 500 mg tablet" } });
    let a = run(&m, medication_administration, &admin).unwrap();
    let EventKind::Administration { medication, given_at } = &a.events[0].kind else { panic!() };
    assert_eq!((medication.name.as_str(), medication.order_id.as_str()), ("clarithromycin", "ORD-1"));
    assert_eq!(*given_at, datetime!(2026-01-02 02:00 UTC));

    let allergy = json!({ "resourceType": "AllergyIntolerance", "patient": subject(), "category": ["medication"],
        "code": { "coding": [{ "system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "70618", "display": "Penicillin" }] },
        "reaction": [{ "severity": "moderate" }, { "severity": "severe" }] });
    let al = run(&m, allergy_intolerance, &allergy).unwrap();
    let EventKind::Allergies { allergies, replace } = &al.events[0].kind else { panic!() };
    assert!(!replace);
    assert_eq!(
        (
            allergies[0].code.as_deref(),
            allergies[0].name.as_str(),
            allergies[0].kind.as_str(),
            allergies[0].severity.as_str()
        ),
        (Some("RXNORM|70618"), "penicillin", "DA", "SV")
    );
}

#[test]
fn devices_are_known_by_eui64_and_their_ids_decode() {
    assert_eq!(device_label(EUI64_SYSTEM, "71-10-00-FE-FF-5F-49-B0").unwrap(), "711000FEFF5F49B0");
    assert!(device_label(EUI64_SYSTEM, "71-10-00").is_err());
    assert_eq!(device_label("urn:oid:1.2.3", "SN-9").unwrap(), "SN-9");
    assert_eq!(device_id("711000FEFF5F49B0"), "eui64-711000feff5f49b0");
    assert!(device_id("SN-9").starts_with("dev-") && device_id("SN-9").len() <= 64);
    let m = mapper();
    let gateway = json!({ "resourceType": "Observation", "status": "final", "subject": subject(),
        "code": { "coding": [{ "system": "http://loinc.org", "code": "8867-4" }] }, "valueQuantity": { "value": 80, "unit": "/min" },
        "extension": [{ "url": GATEWAY_EXTENSION, "valueReference": { "reference": "Device/eui64-0011223344556677" } }] });
    let mapped = run(&m, observation, &gateway).unwrap();
    assert_eq!(observations(&mapped)[0].device.as_deref(), Some("0011223344556677"));
}

#[test]
fn dates_references_and_queries_parse_strictly() {
    let m = mapper();
    let v = json!({ "a": "2026-01-02T03:04:05.25+01:00", "b": "2026-01-02", "c": "2026-01-02T03:04", "d": "2026-13-01", "e": "2026" });
    let el = El::root(&v, "X");
    assert_eq!(date_time(&m, &el, "a").unwrap(), Some(datetime!(2026-01-02 03:04:05.25 +01:00)));
    assert_eq!(date_time(&m, &el, "b").unwrap(), Some(datetime!(2026-01-02 00:00 UTC)));
    assert_eq!(date_time(&m, &el, "e").unwrap(), Some(datetime!(2026-01-01 00:00 UTC)));
    assert_eq!(date_time(&m, &el, "c").unwrap_err().expression, "X.c");
    assert!(date_time(&m, &el, "d").is_err());
    assert_eq!(relative("https://h/fhir/Patient/abc/_history/2"), "Patient/abc");
    assert_eq!(query_param("identifier=http%3A%2F%2Fh%7Cx&y=1", "identifier").as_deref(), Some("http://h|x"));
    assert_eq!(percent_decode("%zz%7c"), "%zz|");
    assert!(issued_patient_id("Patient/0123456789abcdef0123456789abcdef").is_some());
    assert!(issued_patient_id("Patient/123").is_none());
}

/// The HL7 observation cases (src/ingest/map/observation_cases.json) sent as FHIR
/// Observations: the same analyte, value and drop reason through the shared path.
#[test]
fn the_hl7_observation_cases_map_the_same_over_fhir() {
    let table: Value = serde_json::from_str(include_str!("../../map/observation_cases.json")).unwrap();
    let mut failures = Vec::new();
    let mut compared = 0;
    for case in table["cases"].as_array().unwrap() {
        let text = |k: &str| case[k].as_str().unwrap_or_default().to_string();
        let code: Vec<String> = text("code").split('^').map(str::to_string).collect();
        let system = match code.get(2).map(String::as_str) {
            Some("MDC") => "urn:iso:std:iso:11073:10101",
            Some("LN") => "http://loinc.org",
            _ => continue,
        };
        let unit = text("unit").split('^').next().unwrap_or_default().to_string();
        let value = text("value");
        let mut obs = json!({ "resourceType": "Observation", "status": "final", "subject": subject(),
            "code": { "coding": [{ "system": system, "code": code[0] }] } });
        match text("type").as_str() {
            "NM" => match value.parse::<f64>() {
                Ok(v) if unit.is_empty() => obs["valueQuantity"] = json!({ "value": v }),
                Ok(v) => obs["valueQuantity"] = json!({ "value": v, "unit": unit }),
                Err(_) => obs["valueString"] = json!(value),
            },
            "ST" => obs["valueString"] = json!(value),
            "CWE" | "CE" => {
                // CWE code^text^system^alternate code^alternate text: two codings.
                let parts: Vec<&str> = value.split('^').collect();
                let part = |i: usize| parts.get(i).copied().unwrap_or("");
                obs["valueCodeableConcept"] = json!({ "coding": [
                    { "code": part(0), "display": part(1) }, { "code": part(3), "display": part(4) } ] });
            }
            _ => continue,
        }
        compared += 1;
        let m = mapper();
        let name = text("name");
        let result = run(&m, observation, &obs);
        match (&case["expect"], &case["dropped"], result) {
            (Value::Object(expect), _, Ok(mapped)) if !mapped.events.is_empty() => {
                let o = &observations(&mapped)[0];
                if expect.get("name").and_then(Value::as_str) != Some(o.name.as_str()) {
                    failures.push(format!("{name}: mapped to {}", o.name));
                }
                if let Some(want) = expect.get("value").and_then(Value::as_f64)
                    && !o.value.is_some_and(|v| (v - want).abs() < 0.01)
                {
                    failures.push(format!("{name}: value {:?}, want {want}", o.value));
                }
                if let Some(want) = expect.get("text").and_then(Value::as_str)
                    && o.text.as_deref() != Some(want)
                {
                    failures.push(format!("{name}: text {:?}, want {want}", o.text));
                }
            }
            (_, Value::Object(dropped), Err(_)) => {
                let counted: Vec<_> =
                    m.dropped().nonzero().iter().map(|(n, r, _)| (n.to_string(), r.label())).collect();
                let want = (dropped["analyte"].as_str().unwrap().to_string(), dropped["reason"].as_str().unwrap());
                if counted != [want.clone()] {
                    failures.push(format!("{name}: counted {counted:?}, want {want:?}"));
                }
            }
            (_, _, Ok(mapped)) if case["ignored"] == json!(true) && mapped.events.is_empty() => {}
            (_, _, got) => failures.push(format!("{name}: got {got:?}")),
        }
    }
    assert!(compared > 40, "the case table lost its cases");
    assert!(failures.is_empty(), "{} cases differ over FHIR:\n{}", failures.len(), failures.join("\n"));
}

/// Arbitrary JSON near an Observation: a valid one with one element replaced by any value.
fn mutated() -> impl proptest::strategy::Strategy<Value = Value> {
    use proptest::prelude::*;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<f64>().prop_map(|f| json!(f)),
        any::<i64>().prop_map(|i| json!(i)),
        ".{0,12}".prop_map(Value::String),
    ];
    let value = leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("[a-zA-Z]{1,8}", inner, 0..4).prop_map(|m| json!(m)),
        ]
    });
    let paths = [
        "/status",
        "/code",
        "/code/coding",
        "/code/coding/0/system",
        "/code/coding/0/code",
        "/subject",
        "/subject/reference",
        "/subject/identifier",
        "/valueQuantity",
        "/valueQuantity/value",
        "/valueQuantity/unit",
        "/effectiveDateTime",
        "/component",
        "/component/0/code",
        "/component/0/valueQuantity/value",
        "/device",
        "/contained",
        "/referenceRange",
        "/interpretation",
        "/identifier",
        "/extension",
    ];
    (proptest::sample::select(paths.to_vec()), value).prop_map(|(path, v)| {
        let mut obs = json!({ "resourceType": "Observation", "status": "final",
            "code": { "coding": [{ "system": "http://loinc.org", "code": "8480-6" }] },
            "subject": { "reference": "Patient?identifier=http://hospital.example.org/mrn|M" },
            "valueQuantity": { "value": 120, "unit": "mm[Hg]" }, "effectiveDateTime": "2026-01-02T03:04:05Z",
            "component": [{ "code": { "coding": [{ "system": "http://loinc.org", "code": "8462-4" }] }, "valueQuantity": { "value": 80 } }],
            "device": { "reference": "#d" }, "contained": [{ "resourceType": "Device", "id": "d" }],
            "referenceRange": [{ "low": { "value": 90 } }], "interpretation": [{ "coding": [{ "code": "H" }] }],
            "identifier": [{ "value": "x" }], "extension": [{ "url": GATEWAY_EXTENSION }] });
        if let Some(slot) = obs.pointer_mut(path) {
            *slot = v;
        }
        obs
    })
}

proptest::proptest! {
    /// Never a panic, and every refusal names an element, whatever the sender puts where.
    #[test]
    fn any_mutation_of_an_observation_maps_or_is_refused_naming_an_element(obs in mutated()) {
        let m = mapper();
        for map in [observation as MapFn, patient, encounter, medication_request, medication_administration, allergy_intolerance, device] {
            if let Err(issues) = run(&m, map, &obs) {
                proptest::prop_assert!(!issues.is_empty());
                proptest::prop_assert!(issues.iter().all(|i| !i.expression.is_empty()), "{:?}", issues);
            }
        }
    }

    /// The depth check never panics and agrees with serde on what is JSON.
    #[test]
    fn the_bounded_parser_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
        let _ = crate::ingest::fhir::json::parse(&bytes, 8);
    }
}
