//! A patient actor's state at rest. Written when the actor stops cleanly (passivation,
//! shutdown) through `EventStore::save_snapshot`, and by a running actor every
//! `Ports::snapshot_every` events once they are durable (so that after a crash, too, a rebuild
//! tops up a recent one), it lets the next start read one record instead of replaying a day of
//! events (decrypting and decoding each). It is honest about what it is:
//!
//! - **versioned**: a record of another [`SNAPSHOT_VERSION`], of another patient, or that does
//!   not decode is ignored, and the actor is rebuilt from the event log as without one;
//! - **verified against the log**: it names the newest `received_at` it holds (`through`); the
//!   router applies every logged event received at or after it on top (re-applying the newest
//!   replaces its samples), so a snapshot older than the log is topped up, never trusted alone;
//! - **never ahead of the log**: a running actor's snapshot is written only after the append
//!   of its newest event is durable, and names as `through` its newest `received_at` less
//!   [`REORDER_MARGIN`]: a message stamped earlier that reached the actor after the snapshot
//!   was taken is still in the top-up (re-applying the events it already holds replaces their
//!   samples, in log order);
//! - **taken, not read**: a start removes it (`EventStore::take_snapshot`) before the actor
//!   appends anything, so a successor that later fails without writing its own cannot leave an
//!   older snapshot standing beside events it never held; the next start replays the log;
//! - **sealed** like every PHI record at rest (the store's key ring; it holds the identity and
//!   demographics).
//!
//! What it holds is what an actor that never stopped would hold: the rule window (numeric and
//! coded series, medications, allergies, location, sex, discharge, settings), identity and
//! demographics. Open alerts are not in it (the alert store's open index is their record), nor
//! closed-alert memory (a restarted actor starts with none, as before).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use time::{OffsetDateTime, UtcOffset};

use crate::model::{Allergy, Demographics, Location, Medication, PatientId, PatientKey};
use crate::ports::{ActiveMedication, CodedSample, NameMap, PatientView, Sample, Series};

use super::state::PatientState;

/// The encoding version this build writes and reads.
pub const SNAPSHOT_VERSION: u32 = 1;

/// How far before its newest event a running actor's snapshot says it holds everything: two
/// messages of one patient on two connections may reach the actor in another order than they
/// were stamped (`received_at`), by as long as a message can wait for admission. The top-up
/// after a crash re-applies this much of the log.
pub const REORDER_MARGIN: time::Duration = time::Duration::minutes(2);

/// An instant as (unix seconds, nanoseconds, UTC offset in seconds): exact, and a fraction of
/// the cost of an RFC 3339 string to decode (a day's window holds thousands of them).
type Instant = (i64, u32, i32);

fn pack(at: OffsetDateTime) -> Instant {
    (at.unix_timestamp(), at.nanosecond(), at.offset().whole_seconds())
}

fn unpack((secs, nanos, offset): Instant) -> Option<OffsetDateTime> {
    let offset = UtcOffset::from_whole_seconds(offset).ok()?;
    OffsetDateTime::from_unix_timestamp(secs).ok()?.replace_nanosecond(nanos).ok()?.checked_to_offset(offset)
}

#[derive(Serialize, Deserialize)]
struct StoredMedication {
    medication: Medication,
    since: Instant,
    administered_only: bool,
    last_given: Option<Instant>,
    stopped: Option<Instant>,
}

/// Version 1 of the record.
#[derive(Serialize, Deserialize)]
struct SnapshotV1 {
    version: u32,
    patient: PatientId,
    through: Instant,
    key: Option<PatientKey>,
    demographics: Demographics,
    location: Location,
    discharged: bool,
    sex: String,
    series: HashMap<String, Vec<(Instant, f64)>>,
    coded: HashMap<String, Vec<(Instant, String)>>,
    medications: Vec<StoredMedication>,
    allergies: Vec<Allergy>,
    settings: HashMap<String, String>,
}

/// Why a snapshot was not used (the actor is then rebuilt from the log).
#[derive(Debug, thiserror::Error)]
pub enum SnapshotRefused {
    /// Not a snapshot this build reads.
    #[error("snapshot does not decode: {0}")]
    Undecodable(String),
    /// Written by a build with another encoding.
    #[error("snapshot version {0}, this build reads {SNAPSHOT_VERSION}")]
    Version(u32),
    /// Stored under another patient's key.
    #[error("snapshot of another patient")]
    OtherPatient,
    /// A time in it is out of range.
    #[error("snapshot holds an invalid time")]
    BadTime,
}

/// Only the version, read first so a record of another version is refused by its number.
#[derive(Deserialize)]
struct VersionOnly {
    version: u32,
}

impl PatientState {
    /// The snapshot of this state: `None` while it holds no event (nothing to keep).
    pub fn snapshot(&self) -> Option<Result<Vec<u8>, serde_json::Error>> {
        Some(self.encode(self.through()?))
    }

    /// The snapshot a running actor writes (messages may still reach it out of their stamped
    /// order): it names as its newest event one [`REORDER_MARGIN`] before the newest it holds.
    pub fn snapshot_while_running(&self) -> Option<Result<Vec<u8>, serde_json::Error>> {
        Some(self.encode(self.through()? - REORDER_MARGIN))
    }

    fn encode(&self, through: OffsetDateTime) -> Result<Vec<u8>, serde_json::Error> {
        let view = &self.view;
        let record = SnapshotV1 {
            version: SNAPSHOT_VERSION,
            patient: self.id.clone(),
            through: pack(through),
            key: self.key.clone(),
            demographics: self.demographics.clone(),
            location: view.location.clone(),
            discharged: view.discharged,
            sex: view.sex.clone(),
            series: view
                .series
                .iter()
                .map(|(name, s)| (name.clone(), s.iter().map(|x| (pack(x.at), x.value)).collect()))
                .collect(),
            coded: view
                .coded
                .iter()
                .map(|(name, s)| (name.clone(), s.iter().map(|x| (pack(x.at), x.text.clone())).collect()))
                .collect(),
            medications: view
                .medications
                .iter()
                .map(|m| StoredMedication {
                    medication: m.medication.clone(),
                    since: pack(m.since),
                    administered_only: m.administered_only,
                    last_given: m.last_given.map(pack),
                    stopped: m.stopped.map(pack),
                })
                .collect(),
            allergies: view.allergies.clone(),
            settings: view.settings.clone(),
        };
        serde_json::to_vec(&record)
    }

    /// The state a snapshot of patient `id` holds, and the newest `received_at` in it (apply
    /// the logged events received at or after it on top).
    pub fn restore(id: &PatientId, bytes: &[u8]) -> Result<(PatientState, OffsetDateTime), SnapshotRefused> {
        // One pass over the record; only one that does not decode is read again, for its
        // version (a record of another version is refused by its number, not its shape).
        let record: SnapshotV1 = match serde_json::from_slice(bytes) {
            Ok(record) => record,
            Err(e) => {
                return Err(match serde_json::from_slice::<VersionOnly>(bytes) {
                    Ok(VersionOnly { version }) if version != SNAPSHOT_VERSION => SnapshotRefused::Version(version),
                    _ => SnapshotRefused::Undecodable(e.to_string()),
                });
            }
        };
        if record.version != SNAPSHOT_VERSION {
            return Err(SnapshotRefused::Version(record.version));
        }
        if &record.patient != id {
            return Err(SnapshotRefused::OtherPatient);
        }
        let time = |at: Instant| unpack(at).ok_or(SnapshotRefused::BadTime);
        let through = time(record.through)?;
        let mut series = NameMap::with_capacity_and_hasher(record.series.len(), Default::default());
        for (name, samples) in record.series {
            let samples: Result<Series, _> =
                samples.into_iter().map(|(at, value)| Ok(Sample { at: time(at)?, value })).collect();
            series.insert(name, samples?);
        }
        let mut coded = NameMap::with_capacity_and_hasher(record.coded.len(), Default::default());
        for (name, samples) in record.coded {
            let samples: Result<VecDeque<CodedSample>, _> =
                samples.into_iter().map(|(at, text)| Ok(CodedSample { at: time(at)?, text })).collect();
            coded.insert(name, samples?);
        }
        let mut medications = Vec::with_capacity(record.medications.len());
        for m in record.medications {
            medications.push(ActiveMedication {
                medication: m.medication,
                since: time(m.since)?,
                administered_only: m.administered_only,
                last_given: m.last_given.map(time).transpose()?,
                stopped: m.stopped.map(time).transpose()?,
            });
        }
        let view = PatientView {
            patient_id: Some(id.clone()),
            location: record.location,
            discharged: record.discharged,
            sex: record.sex,
            series,
            coded,
            medications,
            allergies: record.allergies,
            settings: record.settings,
            ..PatientView::default()
        };
        let mut state = PatientState::new(id.clone());
        state.key = record.key;
        state.demographics = record.demographics;
        state.view = Arc::new(view);
        state.restored_through(through);
        Ok((state, through))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ClinicalEvent, EventKind, Observation, OrderAction, Phi, ResultStatus};

    fn event(at: OffsetDateTime, kind: EventKind) -> ClinicalEvent {
        ClinicalEvent {
            patient_id: PatientId("p-1".into()),
            patient: PatientKey { authority: "HOSP".into(), mrn: Phi("MRN-1".into()) },
            demographics: Demographics { name: Phi("Test^Pat".into()), sex: "F".into(), ..Default::default() },
            location: Some(Location { unit: "ICU".into(), room: "1".into(), bed: "A".into() }),
            received_at: at,
            kind,
        }
    }

    fn observation(name: &str, at: OffsetDateTime, value: Option<f64>, text: Option<&str>) -> Observation {
        Observation {
            name: name.into(),
            value,
            text: text.map(Into::into),
            unit: String::new(),
            observed_at: at,
            source_code: "LN|9279-1".into(),
            device: None,
            status: ResultStatus::Final,
            result_key: String::new(),
            reference_range: None,
            abnormal_flags: Vec::new(),
        }
    }

    fn state_with_history() -> PatientState {
        let t0 = time::macros::datetime!(2026-01-01 00:00 +01:00);
        let mut state = PatientState::new(PatientId("p-1".into()));
        for (i, rr) in [18.0, 19.5, 21.0].into_iter().enumerate() {
            let at = t0 + time::Duration::minutes(i as i64) + time::Duration::nanoseconds(123);
            let observations = vec![observation("rr", at, Some(rr), None), observation("acvpu", at, None, Some("A"))];
            state.apply(&event(at, EventKind::Observations { observations }));
        }
        let medication = Medication { order_id: "ORD-1".into(), rxnorm: Some("1".into()), name: "warfarin".into() };
        state.apply(&event(
            t0 + time::Duration::minutes(5),
            EventKind::MedicationOrder { action: OrderAction::New, medication },
        ));
        let allergy = Allergy { code: None, name: "penicillin".into(), kind: "DA".into(), severity: "SV".into() };
        state.apply(&event(
            t0 + time::Duration::minutes(6),
            EventKind::Allergies { allergies: vec![allergy], replace: true },
        ));
        state
    }

    #[test]
    fn a_snapshot_restores_what_the_rules_see_and_names_its_newest_event() {
        let state = state_with_history();
        let bytes = state.snapshot().expect("holds events").expect("encodes");
        let (restored, through) = PatientState::restore(&state.id, &bytes).expect("restores");
        assert_eq!(Some(through), state.through());
        assert_eq!(restored.through(), state.through());
        assert_eq!(restored.key, state.key);
        assert_eq!(restored.demographics, state.demographics);
        let (a, b) = (&restored.view, &state.view);
        assert_eq!(a.series, b.series, "times exact to the nanosecond, offsets kept");
        assert_eq!(a.coded, b.coded);
        assert_eq!(a.medications, b.medications);
        assert_eq!(a.allergies, b.allergies);
        assert_eq!((&a.location, a.discharged, &a.sex, &a.settings), (&b.location, b.discharged, &b.sex, &b.settings));
        assert_eq!(a.patient_id, b.patient_id);
    }

    #[test]
    fn a_snapshot_of_another_version_or_patient_or_not_a_snapshot_is_refused() {
        assert!(PatientState::new(PatientId("p-1".into())).snapshot().is_none(), "no event, nothing to keep");
        let state = state_with_history();
        let bytes = state.snapshot().unwrap().unwrap();
        let mut value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        value["version"] = serde_json::json!(SNAPSHOT_VERSION + 1);
        let other_version = serde_json::to_vec(&value).unwrap();
        assert!(matches!(PatientState::restore(&state.id, &other_version), Err(SnapshotRefused::Version(_))));
        assert!(matches!(PatientState::restore(&PatientId("p-2".into()), &bytes), Err(SnapshotRefused::OtherPatient)));
        assert!(matches!(PatientState::restore(&state.id, b"not json"), Err(SnapshotRefused::Undecodable(_))));
        value["version"] = serde_json::json!(SNAPSHOT_VERSION);
        value["through"] = serde_json::json!([i64::MAX, 0, 0]);
        let bad_time = serde_json::to_vec(&value).unwrap();
        assert!(matches!(PatientState::restore(&state.id, &bad_time), Err(SnapshotRefused::BadTime)));
    }
}
