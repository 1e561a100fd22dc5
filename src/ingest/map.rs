//! HL7 v2 message -> clinical event. Reads identity (PID-3, the MR repetition), demographics,
//! location (PV1-3) and IHE PCD-01 / lab OBX rows, mapping codes through the vocabulary.
//! Nothing is guessed: a value whose code, unit or status is not usable is left out.

use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};
use vigil_actors::{ClinicalEvent, Demographics, EventKind, Location, Observation, PatientKey, Phi, ResultStatus};

use super::hl7::{Message, Segment};
use crate::crypto::BlindIndex;
use crate::vocab::{CodeSystem, Vocabulary};

/// Why a message could not become an event; carries what the ERR segment needs.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{segment}-{field}: {what}")]
pub struct MapError {
    /// Segment name.
    pub segment: &'static str,
    /// Field number.
    pub field: u32,
    /// HL7 table 0357 code.
    pub code: u16,
    /// What is wrong (no patient data in it).
    pub what: &'static str,
}

/// Maps parsed messages to events.
pub struct Mapper {
    vocab: Vocabulary,
    index: BlindIndex,
    /// Offset assumed for timestamps sent without one.
    default_offset: UtcOffset,
    /// PID-3 identifier type that names the MRN (CX-5).
    mrn_type: String,
}

impl Mapper {
    /// A mapper with the given vocabulary and blind index, UTC for zone-less timestamps.
    pub fn new(vocab: Vocabulary, index: BlindIndex) -> Self {
        Mapper { vocab, index, default_offset: UtcOffset::UTC, mrn_type: "MR".into() }
    }

    /// ORU^R01 (vitals per IHE PCD-01, or results) -> an observations event.
    pub fn oru_r01(&self, msg: &Message, received_at: OffsetDateTime) -> Result<ClinicalEvent, MapError> {
        let pid = msg.segment("PID").ok_or(MapError { segment: "PID", field: 0, code: 100, what: "PID segment is required" })?;
        let patient = self.patient_key(pid)?;
        let demographics = Demographics {
            name: Phi(display_name(pid)),
            birth_date: Phi(pid.text(7)),
            sex: pid.text(8),
        };
        let location = msg.segment("PV1").map(|pv1| Location {
            unit: pv1.component(3, 1),
            room: pv1.component(3, 2),
            bed: pv1.component(3, 3),
        });
        let obr_time = msg.segment("OBR").and_then(|obr| self.timestamp(&obr.text(7)));
        let mut observations = Vec::new();
        for obx in msg.segments_named("OBX") {
            if let Some(o) = self.observation(obx, obr_time.unwrap_or(received_at)) {
                observations.push(o);
            }
        }
        Ok(ClinicalEvent {
            patient_id: self.index.patient_id(&patient.authority, patient.mrn.expose()),
            patient,
            demographics,
            location: location.filter(|l| !l.unit.is_empty() || !l.bed.is_empty()),
            sender: sender_of(msg),
            control_id: msg.control_id().to_string(),
            raw: Phi(msg.raw().to_string()),
            received_at,
            kind: EventKind::Observations { observations },
        })
    }

    fn patient_key(&self, pid: &Segment) -> Result<PatientKey, MapError> {
        let missing = MapError { segment: "PID", field: 3, code: 101, what: "PID-3 patient identifier is required" };
        let field = pid.field(3).ok_or(missing.clone())?;
        let mut first = None;
        for rep in field.repetitions() {
            let id = rep.component(1);
            if id.is_empty() {
                continue;
            }
            let key = PatientKey { authority: rep.component(4), mrn: Phi(id) };
            if rep.component(5) == self.mrn_type {
                return Ok(key);
            }
            first.get_or_insert(key);
        }
        first.ok_or(missing)
    }

    fn observation(&self, obx: &Segment, default_time: OffsetDateTime) -> Option<Observation> {
        // D deleted, W wrong, X cannot be obtained: no value to use.
        if matches!(obx.text(11).as_str(), "D" | "W" | "X") {
            return None;
        }
        let value_type = obx.text(2);
        if !(value_type == "NM" || value_type.is_empty()) {
            return None;
        }
        let code = obx.component(3, 1);
        let system = CodeSystem::parse(&obx.component(3, 3))?;
        let canonical = self.vocab.lookup(system, &code)?;
        let value: f64 = obx.text(5).trim().parse().ok().filter(|v: &f64| v.is_finite())?;
        // OBX-6 is code^text^system; either part may be the one our table knows.
        let unit = [obx.component(6, 1), obx.component(6, 2)]
            .into_iter()
            .find(|u| self.vocab.knows_unit(u))
            .unwrap_or_default();
        let value = self.vocab.convert(canonical, value, &unit)?;
        let observed_at = self.timestamp(&obx.text(14)).unwrap_or(default_time);
        let device = Some(obx.component(18, 1)).filter(|d| !d.is_empty());
        Some(Observation {
            name: canonical.name.clone(),
            value: Some(value),
            text: None,
            unit: canonical.unit.clone(),
            observed_at,
            source_code: format!("{}|{}", obx.component(3, 3), code),
            device,
            status: ResultStatus::Final,
            result_key: String::new(),
            reference_range: None,
            abnormal_flags: Vec::new(),
        })
    }

    /// HL7 DTM `YYYY[MM[DD[HH[MM[SS[.S...]]]]]][+/-ZZZZ]`; the default offset when none.
    pub fn timestamp(&self, text: &str) -> Option<OffsetDateTime> {
        parse_dtm(text, self.default_offset)
    }
}

/// The sender a control id is unique within: sending application and facility.
pub fn sender_of(msg: &Message) -> String {
    format!("{}|{}", msg.sending_application(), msg.sending_facility())
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
mod tests {
    use super::*;
    use time::macros::datetime;

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
OBX|4|NM|150021^MDC_PRESS_BLD_NONINV_SYS^MDC|1.4.1.1|95|266016^MDC_DIM_MMHG^MDC|||||D\r\
OBX|5|NM|99999^UNKNOWN^MDC||5\r\
OBX|6|NM|8867-4^HR^LN||oops\r";
        let msg = Message::parse(msg.as_bytes()).unwrap();
        let mapper = Mapper::new(Vocabulary::shipped(), BlindIndex::new(&[7; 32]));
        let now = OffsetDateTime::now_utc();
        let event = mapper.oru_r01(&msg, now).unwrap();
        assert_eq!(event.patient.mrn.expose(), "123456");
        assert_eq!(event.patient.authority, "HOSP");
        assert_eq!(event.demographics.name.expose(), "Doe, Jane");
        assert_eq!(event.location.as_ref().map(|l| l.bed.as_str()), Some("B"));
        let EventKind::Observations { observations } = &event.kind else { panic!("not observations") };
        let got: Vec<_> = observations.iter().map(|o| (o.name.as_str(), (o.value.unwrap() * 10.0).round() / 10.0)).collect();
        assert_eq!(got, vec![("rr", 24.0), ("temp", 38.5)], "deleted, unknown and non-numeric rows are left out");
        assert_eq!(observations[0].observed_at, datetime!(2026-01-02 03:04:01 UTC));
        assert_eq!(observations[0].device.as_deref(), Some("DEV1"));
        assert_eq!(observations[1].observed_at, datetime!(2026-01-02 03:04:00 UTC), "OBR-7 when OBX-14 is empty");
    }

    #[test]
    fn missing_identity_is_a_located_error() {
        let msg = Message::parse(b"MSH|^~\\&|A|B|C|D|20260101||ORU^R01|C2|P|2.6\rPID|||\r").unwrap();
        let mapper = Mapper::new(Vocabulary::shipped(), BlindIndex::new(&[7; 32]));
        let err = mapper.oru_r01(&msg, OffsetDateTime::now_utc()).unwrap_err();
        assert_eq!((err.segment, err.field, err.code), ("PID", 3, 101));
    }
}
