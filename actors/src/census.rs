//! The census: every patient with a current location (from ADT, or the location an event
//! carried), their bed and their current NEWS2, kept beside the patient actors so that an
//! actor passivated for being quiet stays on the unit board. Patient actors write it after
//! each message; consoles read it (bounded) and follow its changes on a bounded channel.

use std::sync::Arc;

use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::model::{PatientId, Phi};

/// Patients the census holds at most; beyond, new patients are counted and left out (the
/// board then says it is incomplete rather than silently showing part of a unit).
pub const MAX_CENSUS: usize = 20_000;
/// Changes buffered per subscriber; a subscriber that lags re-reads the census.
const CHANNEL: usize = 1024;

/// The NEWS2 a patient's latest vital signs give, as the rule computed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct News2Now {
    /// Aggregate 0-20.
    pub score: i64,
    /// RCP band: low, low-medium, medium, high.
    pub band: String,
    /// Parameters were missing: the aggregate is a lower bound.
    pub partial: bool,
}

/// One occupied bed (as consoles get it, and as the console store keeps it without its score).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CensusBed {
    /// Opaque patient id.
    pub patient: PatientId,
    /// Display name, as alerts carry it (shown on the console, never logged).
    pub name: Phi<String>,
    /// Unit.
    pub unit: String,
    /// Room; empty when not sent.
    pub room: String,
    /// Bed.
    pub bed: String,
    /// The current NEWS2; `None` when no score is known (no vital signs since the server
    /// started, or the rule does not apply): shown as "no score", never as a low one.
    pub news2: Option<News2Now>,
}

/// A change of the census.
#[derive(Clone, Debug)]
pub enum CensusChange {
    /// A patient is in a bed now (admitted, moved, or their score changed); `left_unit` is the
    /// unit they left when they moved to another.
    Bed {
        /// The bed now.
        bed: CensusBed,
        /// The unit left, when it changed.
        left_unit: Option<String>,
    },
    /// A patient left the census (discharged, admission cancelled, merged into another record).
    Left {
        /// Opaque patient id.
        patient: PatientId,
        /// The unit they were on.
        unit: String,
    },
}

/// The census, shared by the router, its patient actors and the consoles.
pub struct Census {
    beds: DashMap<PatientId, CensusBed>,
    changes: broadcast::Sender<Arc<CensusChange>>,
    refused: std::sync::atomic::AtomicU64,
}

impl Default for Census {
    fn default() -> Self {
        Census {
            beds: DashMap::new(),
            changes: broadcast::channel(CHANNEL).0,
            refused: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl Census {
    /// Record `patient` in `bed`, or out of the census (`None`); publishes only a change.
    pub fn set(&self, patient: &PatientId, bed: Option<CensusBed>) {
        let change = match bed {
            None => match self.beds.remove(patient) {
                Some((patient, old)) => CensusChange::Left { patient, unit: old.unit },
                None => return,
            },
            Some(bed) => {
                if self.beds.len() >= MAX_CENSUS && !self.beds.contains_key(patient) {
                    let n = self.refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if n == 0 {
                        tracing::warn!(max = MAX_CENSUS, "census full: further patients are not on the board");
                    }
                    return;
                }
                let old = self.beds.insert(patient.clone(), bed.clone());
                match old {
                    Some(old) if old == bed => return,
                    Some(old) if old.unit != bed.unit => CensusChange::Bed { bed, left_unit: Some(old.unit) },
                    _ => CensusChange::Bed { bed, left_unit: None },
                }
            }
        };
        // No subscriber is not an error.
        let _ = self.changes.send(Arc::new(change));
    }

    /// The bed `patient` is in, if any.
    pub fn get(&self, patient: &PatientId) -> Option<CensusBed> {
        self.beds.get(patient).map(|b| b.clone())
    }

    /// At most `limit` beds on units `visible` accepts, ordered by unit and bed; `true` when
    /// more were left out (or the census itself is full).
    pub fn beds(&self, visible: impl Fn(&CensusBed) -> bool, limit: usize) -> (Vec<CensusBed>, bool) {
        let mut out = Vec::new();
        let mut more = self.refused.load(std::sync::atomic::Ordering::Relaxed) > 0;
        for entry in self.beds.iter() {
            if !visible(entry.value()) {
                continue;
            }
            if out.len() == limit {
                more = true;
                break;
            }
            out.push(entry.value().clone());
        }
        out.sort_by(|a, b| (&a.unit, &a.room, &a.bed).cmp(&(&b.unit, &b.room, &b.bed)));
        (out, more)
    }

    /// Changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<CensusChange>> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bed(unit: &str, bed: &str, news2: Option<i64>) -> CensusBed {
        CensusBed {
            patient: PatientId("p1".into()),
            name: Phi("Test, Synthetic".into()),
            unit: unit.into(),
            room: String::new(),
            bed: bed.into(),
            news2: news2.map(|score| News2Now { score, band: "low".into(), partial: false }),
        }
    }

    #[test]
    fn a_patient_is_admitted_moved_rescored_and_discharged_each_change_published_once() {
        let census = Census::default();
        let mut rx = census.subscribe();
        let p = PatientId("p1".into());
        census.set(&p, Some(bed("ICU", "1", None)));
        census.set(&p, Some(bed("ICU", "1", None)));
        census.set(&p, Some(bed("5W", "2", Some(3))));
        census.set(&p, None);
        census.set(&p, None);
        let changes: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(changes.len(), 3, "{changes:?}");
        assert!(matches!(&*changes[0], CensusChange::Bed { left_unit: None, .. }));
        match &*changes[1] {
            CensusChange::Bed { bed, left_unit } => {
                assert_eq!((bed.unit.as_str(), left_unit.as_deref()), ("5W", Some("ICU")));
                assert_eq!(bed.news2.as_ref().map(|n| n.score), Some(3));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(&*changes[2], CensusChange::Left { unit, .. } if unit == "5W"));
        assert!(census.get(&p).is_none());
    }

    #[test]
    fn a_read_is_bounded_and_says_when_beds_were_left_out() {
        let census = Census::default();
        for i in 0..5 {
            let mut b = bed("ICU", &i.to_string(), None);
            b.patient = PatientId(format!("p{i}"));
            census.set(&b.patient.clone(), Some(b));
        }
        let (all, more) = census.beds(|b| b.unit == "ICU", 10);
        assert_eq!((all.len(), more), (5, false));
        assert_eq!(all.iter().map(|b| b.bed.as_str()).collect::<Vec<_>>(), ["0", "1", "2", "3", "4"]);
        let (some, more) = census.beds(|_| true, 3);
        assert_eq!((some.len(), more), (3, true));
        assert_eq!(census.beds(|b| b.unit == "5W", 10).0.len(), 0);
    }
}
