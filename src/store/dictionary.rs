//! The rows dictionary of sealed format 3 (`crypto::ROWS_DICTIONARY`): how it was trained, and
//! what it buys. Its samples are rows exactly as the stores seal them (event bodies and
//! message-log entries), made by mapping the load-test harness's synthetic messages of every
//! HL7 feed (admissions, PCD-01 vitals, lab panels, pharmacy orders) and logging FHIR
//! transaction bundles. Synthetic only, like every sample Vigil ships.
//!
//! Train one: `VIGIL_DICTIONARY_OUT=/tmp/rows.dict cargo test --lib store::dictionary -- --ignored`.
//! Rows sealed with a dictionary open only with it, so a new one ships as a new sealed format
//! beside the old ones (a new file, a new format byte), never in place of one.

use std::sync::Arc;

use time::OffsetDateTime;
use vigil_actors::{AcceptedMessage, ClinicalEvent, Envelope, FromMessage, MessageKey, Phi};
use vigil_loadtest::orders::{INTERACTING_PAIR, PLAIN_DRUGS, lab_panel, pharmacy_order};
use vigil_loadtest::pcd01::{Acvpu, PatientDemo, Vitals, oru_r01};

use crate::crypto::BlindIndex;
use crate::ingest::hl7::{FEEDS, Message};
use crate::ingest::map::Mapper;
use crate::vocab::Vocabulary;

const FAMILIES: [&str; 8] = ["Quartermaine", "Okonkwo", "Lindqvist", "Haddad", "Moreau", "Tanaka", "Ferreira", "Novak"];
const GIVEN: [&str; 8] = ["Zebulon", "Adaeze", "Ingrid", "Samir", "Colette", "Hiro", "Lucia", "Tomas"];
const UNITS: [&str; 4] = ["ICU", "MED3", "SURG2", "ED"];

/// A small deterministic generator (the same samples, the same dictionary).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    /// A value around `mid`, `spread` either side, rounded to `step`.
    fn around(&mut self, mid: f64, spread: f64, step: f64) -> f64 {
        let unit = (self.next() % 10_000) as f64 / 10_000.0;
        ((mid - spread + 2.0 * spread * unit) / step).round() * step
    }
}

fn patient(n: u64, rng: &mut Lcg) -> PatientDemo {
    PatientDemo {
        mrn: format!("{}", 100_000 + rng.next() % 900_000),
        assigning_authority: "VIGIL_SIM".into(),
        family: FAMILIES[(n % 8) as usize].into(),
        given: GIVEN[(rng.next() % 8) as usize].into(),
        birth_date: format!("19{:02}{:02}{:02}", 30 + rng.next() % 70, 1 + rng.next() % 12, 1 + rng.next() % 28),
        sex: ["F", "M", "U"][(rng.next() % 3) as usize].into(),
        unit: UNITS[(n % 4) as usize].into(),
        room: format!("{}", 100 + n % 40),
        bed: ["A", "B"][(n % 2) as usize].into(),
    }
}

fn vitals(rng: &mut Lcg) -> Vitals {
    let on_oxygen = rng.next().is_multiple_of(4);
    Vitals {
        hr: Some(rng.around(90.0, 35.0, 1.0)),
        rr: Some(rng.around(18.0, 8.0, 1.0)),
        spo2: Some(rng.around(94.0, 6.0, 1.0)),
        sbp: Some(rng.around(118.0, 35.0, 1.0)),
        dbp: Some(rng.around(72.0, 20.0, 1.0)),
        map: Some(rng.around(86.0, 20.0, 1.0)),
        temp_c: Some(rng.around(37.4, 1.6, 0.1)),
        gcs: rng.next().is_multiple_of(3).then(|| rng.around(13.0, 2.0, 1.0)),
        fio2: Some(if on_oxygen { rng.around(35.0, 10.0, 1.0) } else { 21.0 }),
        o2_flow: Some(if on_oxygen { rng.around(4.0, 2.0, 1.0) } else { 0.0 }),
        acvpu: Some(
            [Acvpu::Alert, Acvpu::Alert, Acvpu::Alert, Acvpu::Confusion, Acvpu::Voice][(rng.next() % 5) as usize],
        ),
    }
}

/// The rows one HL7 message makes: its events' bodies and its message-log entry.
fn rows_of(mapper: &Mapper, raw: &str, sender: &str, control_id: &str, at: OffsetDateTime) -> Vec<Vec<u8>> {
    let msg = Message::parse(raw.as_bytes()).expect("the harness's messages parse");
    let (code, trigger, _) = msg.message_type();
    let feed = FEEDS.iter().find(|f| f.code == code && f.trigger == trigger).expect("a mapped message type");
    let events: Vec<ClinicalEvent> = (feed.map)(mapper, &msg, at).expect("the harness's messages map");
    let envelope = Envelope { key: MessageKey::hl7(sender, control_id), raw: Phi(raw.to_string()), received_at: at };
    let message = FromMessage { envelope: Arc::new(envelope), logs_message: true, parts: Vec::new(), in_transit: None };
    let mut rows: Vec<Vec<u8>> =
        events.iter().map(|e| super::event_body(e, Some(&message)).expect("an event encodes")).collect();
    if let Some(first) = events.first() {
        let accepted = AcceptedMessage { patient_id: first.patient_id.clone(), received_at: at };
        rows.push(super::embedded::message_row(&accepted, raw).expect("a message row encodes"));
    }
    rows
}

/// Rows of `patients` synthetic patients: an admission, `per_patient` PCD-01 messages, a lab
/// panel and a pharmacy order each, and a FHIR bundle of vitals logged for every fourth.
fn samples(seed: u64, patients: u64, per_patient: u64) -> Vec<Vec<u8>> {
    let mapper = Mapper::new(Vocabulary::shipped(), BlindIndex::new(&[7; 32]));
    let mut rng = Lcg(seed);
    let start = OffsetDateTime::from_unix_timestamp(1_796_000_000).expect("a valid time");
    let mut out = Vec::new();
    for n in 0..patients {
        let p = patient(n, &mut rng);
        let at = start + time::Duration::seconds((n * 37) as i64);
        let id = |kind: &str, i: u64| format!("{kind}{seed}-{n}-{i}");
        out.extend(rows_of(
            &mapper,
            &vigil_loadtest::adt::adt_a01(&p, &id("ADT", 0), at),
            "EPIC^HOSP",
            &id("ADT", 0),
            at,
        ));
        let device = format!("MON-{:04}", n);
        for i in 0..per_patient {
            let at = at + time::Duration::seconds((i * 60) as i64);
            let raw = oru_r01(&p, &device, &vitals(&mut rng), &id("ORU", i), at);
            out.extend(rows_of(&mapper, &raw, "MONITOR^ICU", &id("ORU", i), at));
        }
        let raw = lab_panel(&p, &id("LAB", 0), rng.next(), at);
        out.extend(rows_of(&mapper, &raw, "LAB^HOSP", &id("LAB", 0), at));
        let drugs =
            if n.is_multiple_of(5) { &INTERACTING_PAIR[..] } else { &PLAIN_DRUGS[(n % 3) as usize..=(n % 3) as usize] };
        let raw = pharmacy_order(&p, &id("RDE", 0), drugs, at);
        out.extend(rows_of(&mapper, &raw, "PHARM^HOSP", &id("RDE", 0), at));
        if n.is_multiple_of(4) {
            let observations = vigil_loadtest::fhir::observations(&p, &device, &vitals(&mut rng), &id("FHIR", 0), at);
            let bundle = vigil_loadtest::fhir::transaction(observations, &id("FHIR", 0));
            let accepted = AcceptedMessage { patient_id: vigil_actors::PatientId(format!("p-{n}")), received_at: at };
            out.push(super::embedded::message_row(&accepted, &bundle.to_string()).expect("a message row encodes"));
        }
    }
    out
}

#[test]
#[ignore = "trains a dictionary (VIGIL_DICTIONARY_OUT); shipped dictionaries never change"]
fn train_the_rows_dictionary() {
    let samples = samples(1, 400, 8);
    let dictionary = zstd::dict::from_samples(&samples, 16 * 1024).expect("zstd trains a dictionary");
    let out = std::env::var("VIGIL_DICTIONARY_OUT").unwrap_or_else(|_| "target/rows.dict".into());
    std::fs::write(&out, &dictionary).expect("the dictionary is written");
    eprintln!("{} samples, {} bytes of dictionary written to {out}", samples.len(), dictionary.len());
}

/// The rows of messages the dictionary was not trained on (another seed: other patients,
/// values, control ids) seal to well under what zstd alone makes of them, and open the same.
#[test]
fn the_rows_dictionary_seals_unseen_rows_smaller_than_compression_alone() {
    let ring = crate::crypto::KeyRing::from_keys(&[(1, [7; 32])]).unwrap();
    let rows = samples(99, 12, 4);
    assert!(rows.len() > 90, "{} rows", rows.len());
    let (mut sealed_bytes, mut alone_bytes, mut plain_bytes) = (0, 0, 0);
    for (i, row) in rows.iter().enumerate() {
        let key = (i as u64).to_be_bytes();
        let aad = crate::crypto::Aad { table: "events", key: &key, column: "record" };
        let sealed = ring.seal(aad, row).unwrap();
        assert_eq!(ring.open(aad, &sealed).unwrap(), *row);
        sealed_bytes += sealed.len();
        alone_bytes += zstd::bulk::compress(row, 1).unwrap().len().min(row.len()) + 33;
        plain_bytes += row.len();
    }
    assert!(
        sealed_bytes * 2 < alone_bytes,
        "{sealed_bytes} sealed bytes with the dictionary, {alone_bytes} with zstd alone, {plain_bytes} plain"
    );
}
