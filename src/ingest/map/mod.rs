//! HL7 v2 message -> clinical events. Reads identity (PID-3, the MR repetition), demographics
//! and location, then hands each message type to its module: `oru` (IHE PCD-01 vitals and lab
//! results), `adt` (census, merge), `allergies` (AL1, IAM), `orders` (RDE, OMP, RAS).
//! Nothing is guessed: a value whose code, unit or status is not usable is left out.
//!
//! Adding a trigger event: a function here or in a submodule returning `Vec<ClinicalEvent>`,
//! a row in `hl7::feed::FEEDS`, a fixture in tests/fixtures/hl7/ with its expected outcome, and
//! a row in docs/hl7.md.

mod adt;
mod allergies;
pub mod identity;
mod orders;
mod oru;
pub(crate) mod pcd04;
pub mod technical;
mod values;

use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};
use vigil_actors::{ClinicalEvent, Demographics, EventKind, Location, PatientId, PatientKey, Phi};

use std::sync::Arc;

use super::hl7::{Repetition, Segment};
use crate::crypto::BlindIndex;
use crate::vocab::{DroppedValues, Vocabulary};

pub use allergies::is_rxnorm;
pub use identity::{Authorities, AuthorityError};
pub use orders::normalise_drug_name;
pub use values::{reference_range, trim_float};

/// Why a message could not become an event; carries what the ERR segment needs.
#[derive(Debug, Clone, PartialEq)]
pub struct MapError {
    /// Segment name.
    pub segment: &'static str,
    /// Field number; 0 when the segment itself is missing.
    pub field: u32,
    /// HL7 table 0357 code.
    pub code: u16,
    /// What is wrong (no patient data in it).
    pub what: &'static str,
}

impl std::fmt::Display for MapError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field == 0 {
            f.write_str(self.what)
        } else {
            write!(f, "{}-{}: {}", self.segment, self.field, self.what)
        }
    }
}

impl std::error::Error for MapError {}

impl MapError {
    const fn new(segment: &'static str, field: u32, code: u16, what: &'static str) -> Self {
        MapError { segment, field, code, what }
    }
}

const NO_PID: MapError = MapError::new("PID", 0, 100, "PID segment is required");

/// Maps parsed messages to events. A clone shares the vocabulary and the dropped-value
/// counters: the HL7 and FHIR feeds map through one.
#[derive(Clone)]
pub struct Mapper {
    vocab: Arc<Vocabulary>,
    /// Values of known analytes that could not be used, by name and reason (`/metrics`).
    dropped: Arc<DroppedValues>,
    index: BlindIndex,
    /// Which assigning authority a patient identifier belongs to, shared with FHIR.
    authorities: Arc<Authorities>,
    /// Offset assumed for timestamps sent without one.
    default_offset: UtcOffset,
    /// PID-3 identifier type that names the MRN (CX-5).
    mrn_type: String,
}

impl Mapper {
    /// A mapper with the given vocabulary and blind index, UTC for zone-less timestamps, and
    /// `MR` as the identifier type of the MRN.
    pub fn new(vocab: Vocabulary, index: BlindIndex) -> Self {
        let dropped = Arc::new(DroppedValues::new(&vocab));
        Mapper {
            vocab: Arc::new(vocab),
            dropped,
            index,
            authorities: Arc::new(Authorities::default()),
            default_offset: UtcOffset::UTC,
            mrn_type: "MR".into(),
        }
    }

    /// The namespace <-> identifier-system table (`[fhir] identifier_systems`).
    pub fn with_authorities(mut self, authorities: Authorities) -> Self {
        self.authorities = Arc::new(authorities);
        self
    }

    /// Which assigning authority an identifier belongs to.
    pub fn authorities(&self) -> &Authorities {
        &self.authorities
    }

    /// The offset assumed for timestamps sent without one.
    pub fn default_offset(&self) -> UtcOffset {
        self.default_offset
    }

    /// The PID-3 identifier type (CX-5) that names the MRN.
    pub fn mrn_type(&self) -> &str {
        &self.mrn_type
    }

    /// The opaque id of a patient identity.
    pub fn patient_id(&self, key: &PatientKey) -> PatientId {
        self.index.patient_id(&key.authority, key.mrn.expose())
    }

    /// Counters of observation values dropped at mapping (unit, plausibility, unknown answer).
    pub fn dropped(&self) -> &DroppedValues {
        &self.dropped
    }

    /// The PID-3 identifier type (CX-5) that names the MRN (`[hl7] mrn_identifier_type`).
    pub fn with_mrn_type(mut self, mrn_type: impl Into<String>) -> Self {
        self.mrn_type = mrn_type.into();
        self
    }

    /// The offset assumed for timestamps without one (`[hl7] default_utc_offset`).
    pub fn with_default_offset(mut self, offset: UtcOffset) -> Self {
        self.default_offset = offset;
        self
    }

    /// HL7 DTM `YYYY[MM[DD[HH[MM[SS[.S...]]]]]][+/-ZZZZ]`; the default offset when none.
    pub fn timestamp(&self, text: &str) -> Option<OffsetDateTime> {
        parse_dtm(text, self.default_offset)
    }

    /// The key the MRN is found under: the PID-3 (or MRG-1) repetition whose identifier type
    /// is the configured one; failing that, the first repetition sent without a type. An
    /// identifier of another type (SS, PI, ...) is never taken for the MRN.
    fn identity(&self, segment: &Segment, field: usize, missing: MapError) -> Result<PatientKey, MapError> {
        let field = segment.field(field).ok_or(missing.clone())?;
        let mut untyped = None;
        for rep in field.repetitions() {
            let id = rep.component(1);
            if id.trim().is_empty() {
                continue;
            }
            let authority = self.authorities.of_hd(&rep.sub(4, 1), &rep.sub(4, 2), &rep.sub(4, 3));
            let key = PatientKey { authority, mrn: Phi(id) };
            let kind = rep.component(5);
            if kind == self.mrn_type {
                return Ok(key);
            }
            if kind.is_empty() {
                untyped.get_or_insert(key);
            }
        }
        untyped.ok_or(missing)
    }

    fn patient_key(&self, pid: &Segment) -> Result<PatientKey, MapError> {
        self.identity(
            pid,
            3,
            MapError::new("PID", 3, 101, "PID-3 has no patient identifier of the configured MRN type"),
        )
    }

    /// An event for the patient of `pid`; the caller sets the
    /// location and kind.
    fn event(&self, pid: &Segment, received_at: OffsetDateTime, kind: EventKind) -> Result<ClinicalEvent, MapError> {
        let patient = self.patient_key(pid)?;
        Ok(ClinicalEvent {
            patient_id: self.patient_id(&patient),
            patient,
            demographics: Demographics { name: Phi(display_name(pid)), birth_date: Phi(pid.text(7)), sex: pid.text(8) },
            location: None,
            received_at,
            kind,
        })
    }
}

/// Location from a PL field (unit^room^bed); `None` when neither unit nor bed is sent.
fn location(segment: &Segment, field: usize) -> Option<Location> {
    let l = Location {
        unit: segment.component(field, 1),
        room: segment.component(field, 2),
        bed: segment.component(field, 3),
    };
    (!l.unit.is_empty() || !l.bed.is_empty()).then_some(l)
}

/// `system|code` of a coded element's first triplet with a code, for audit.
fn coded(rep: &Repetition<'_>) -> Option<String> {
    for (code, system) in [(1, 3), (4, 6)] {
        let c = rep.component(code);
        if !c.is_empty() {
            return Some([&*rep.get(system), &c].join("|"));
        }
    }
    None
}

fn display_name(pid: &Segment) -> String {
    let family = pid.component(5, 1);
    let given = pid.component(5, 2);
    match (family.is_empty(), given.is_empty()) {
        (false, false) => format!("{family}, {given}"),
        (false, true) => family,
        _ => given,
    }
}

/// Parse an HL7 DTM. Precision below the day is optional, as the standard allows.
pub fn parse_dtm(text: &str, default_offset: UtcOffset) -> Option<OffsetDateTime> {
    let text = text.trim();
    let (body, offset) = match text.find(['+', '-']) {
        Some(i) => {
            let (b, z) = text.split_at(i);
            let sign: i8 = if z.starts_with('-') { -1 } else { 1 };
            let digits = z.get(1..)?;
            if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let h: i8 = digits.get(..2)?.parse().ok()?;
            let m: i8 = digits.get(2..)?.parse().ok()?;
            (b, UtcOffset::from_hms(sign * h, sign * m, 0).ok()?)
        }
        None => (text, default_offset),
    };
    let (whole, fraction) = match body.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (body, None),
    };
    if whole.len() < 8 || whole.len() > 14 || whole.len() % 2 != 0 || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> { whole.get(r).map(|s| s.parse().ok()).unwrap_or(Some(0)) };
    let year = i32::try_from(num(0..4)?).ok()?;
    let month = Month::try_from(u8::try_from(num(4..6)?).ok()?).ok()?;
    let day = u8::try_from(num(6..8)?).ok()?;
    let nanos = match fraction {
        Some(f) if !f.is_empty() && f.len() <= 9 && f.bytes().all(|b| b.is_ascii_digit()) => {
            f.parse::<u32>().ok()? * 10u32.pow(9 - f.len() as u32)
        }
        Some(_) => return None,
        None => 0,
    };
    let time = Time::from_hms_nano(
        u8::try_from(num(8..10)?).ok()?,
        u8::try_from(num(10..12)?).ok()?,
        u8::try_from(num(12..14)?).ok()?,
        nanos,
    )
    .ok()?;
    let date = Date::from_calendar_date(year, month, day).ok()?;
    Some(PrimitiveDateTime::new(date, time).assume_offset(offset))
}

#[cfg(test)]
mod tests;
