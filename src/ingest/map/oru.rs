//! ORU^R01 -> one observations event: IHE PCD-01 vitals (MDC codes, OBX-4 containment,
//! OBX-18 device) and lab results (LOINC; NM, SN, ST, CWE; units, reference ranges, abnormal
//! flags; OBX-11 status with corrections and deletions keyed by filler order, code and sub-id).

use std::borrow::Cow;

use time::OffsetDateTime;
use vigil_actors::{ClinicalEvent, EventKind, Observation, ResultStatus};

use super::values::{reference_range, trim_float};
use super::{MapError, Mapper, NO_PID, location};
use crate::ingest::hl7::{Message, Segment};
use crate::vocab::{Canonical, DropReason, UnitMatch, ValueType};

/// The order an OBX belongs to.
struct OrderContext {
    /// Filler order number (OBR-3.1), else placer (OBR-2.1).
    order_number: String,
    /// OBR-7 observation date/time.
    observed_at: Option<OffsetDateTime>,
}

/// OBX-14 of the row before: a monitor stamps every row of a report with the same time, so
/// it is parsed once per report, not once per row.
#[derive(Default)]
struct LastTime {
    text: String,
    at: Option<OffsetDateTime>,
}

impl LastTime {
    fn parse(&mut self, mapper: &Mapper, text: &str) -> Option<OffsetDateTime> {
        if self.text != text {
            text.clone_into(&mut self.text);
            self.at = mapper.timestamp(text);
        }
        self.at
    }
}

impl Mapper {
    /// ORU^R01 (vitals per IHE PCD-01, or results) -> an observations event.
    pub fn oru_r01(&self, msg: &Message, received_at: OffsetDateTime) -> Result<Vec<ClinicalEvent>, MapError> {
        let pid = msg.segment("PID").ok_or(NO_PID)?;
        let mut event = self.event(pid, received_at, EventKind::Observations { observations: Vec::new() })?;
        event.location = msg.segment("PV1").and_then(|pv1| location(pv1, 3));
        let observations = self.oru_observations(msg, received_at);
        event.kind = EventKind::Observations { observations };
        Ok(vec![event])
    }

    /// The observations of an ORU^R01, whoever they are for: the readings of a PCD-01
    /// report that names no patient are attributed through the device's association, or
    /// quarantined (`ingest/hl7/feed.rs`).
    pub fn oru_observations(&self, msg: &Message, received_at: OffsetDateTime) -> Vec<Observation> {
        let mut observations = Vec::new();
        let mut order = OrderContext { order_number: String::new(), observed_at: None };
        let mut times = LastTime::default();
        for segment in msg.segments() {
            match segment.name() {
                "OBR" => {
                    let filler = segment.get(3, 1);
                    let number = if filler.is_empty() { segment.get(2, 1) } else { filler };
                    order = OrderContext {
                        order_number: number.into_owned(),
                        observed_at: self.timestamp(&segment.get(7, 1)),
                    };
                }
                "OBX" => match self.observation(segment, &order, &mut times, received_at) {
                    Ok(Some(o)) => observations.push(o),
                    Ok(None) => {}
                    Err((name, reason)) => {
                        // The rest of the message is still used; the sender's ACK stays AA.
                        // Operators see the counter on /metrics; a line per value would let any
                        // MLLP peer write the log without limit, so it is debug only.
                        self.dropped.count(&name, reason);
                        tracing::debug!(
                            control_id = %msg.control_id(),
                            obx = %segment.text(1),
                            analyte = %name,
                            reason = reason.label(),
                            "observation value dropped, not scored"
                        );
                    }
                },
                _ => {}
            }
        }
        observations
    }

    /// The canonical analyte of OBX-3: the primary triplet, else the alternate one (a LIS
    /// often sends its local code first and LOINC second).
    fn obx_analyte(&self, obx: &Segment) -> Option<(&Canonical, String)> {
        let triplets = [(1, 3), (4, 6)].map(|(code, system)| (obx.get(3, system), obx.get(3, code)));
        self.analyte(triplets.iter().map(|(s, c)| (&**s, &**c)))
    }

    /// One OBX as an observation; `Ok(None)` for a row that is not one (an unmapped code, a
    /// device row, a status without a value); `Err` with the canonical name and the reason
    /// for a value of a known analyte that cannot be used (counted, never scored).
    fn observation(
        &self,
        obx: &Segment,
        order: &OrderContext,
        times: &mut LastTime,
        received_at: OffsetDateTime,
    ) -> Result<Option<Observation>, (String, DropReason)> {
        let status = match &*obx.get(11, 1) {
            // R is a monitor's real-time value (PCD-01); an empty status is taken as final.
            "F" | "R" | "" => ResultStatus::Final,
            "P" | "I" | "S" => ResultStatus::Preliminary,
            "C" | "A" => ResultStatus::Corrected,
            "D" => ResultStatus::Deleted,
            // W (wrong, retracted by a later D or C), X (cannot be obtained), N, O, U: no value.
            _ => return Ok(None),
        };
        let Some((canonical, source_code)) = self.obx_analyte(obx) else { return Ok(None) };
        let refuse = |reason: DropReason| (canonical.name.clone(), reason);
        let result_key = [&order.order_number, &*obx.get(3, 1), &*obx.get(4, 1)].join("|");
        let observed_at = times.parse(self, &obx.get(14, 1)).or(order.observed_at).unwrap_or(received_at);
        let mut observation = Observation {
            name: canonical.name.clone(),
            value: None,
            text: None,
            unit: canonical.unit.clone(),
            observed_at,
            source_code,
            device: Some(obx.get(18, 1)).filter(|d| !d.is_empty()).map(Cow::into_owned),
            status,
            result_key,
            reference_range: None,
            abnormal_flags: obx
                .field(8)
                .map(|f| f.repetitions().map(|r| r.get(1)).filter(|s| !s.is_empty()).map(Cow::into_owned).collect())
                .unwrap_or_default(),
        };
        if status == ResultStatus::Deleted {
            // A deletion retracts the earlier result by key; it carries no value.
            return Ok(Some(observation));
        }
        match canonical.value_type {
            ValueType::Text => {
                if self.has_answers(canonical) {
                    observation.text = Some(self.answer(canonical, &answer_candidates(obx)).map_err(refuse)?);
                } else {
                    let Some(text) = coded_or_text(obx) else { return Ok(None) };
                    observation.text = Some(text);
                }
            }
            ValueType::Numeric => {
                if obx.get(5, 1).trim().is_empty() {
                    return Ok(None);
                }
                let (value, comparator) = numeric(obx).ok_or_else(|| refuse(DropReason::NotNumeric))?;
                let unit = self.obx_unit(obx, canonical);
                let measured = self.measure(canonical, value, unit).map_err(refuse)?;
                let convert = |v: f64| v * measured.scale + measured.offset;
                observation.value = Some(measured.value);
                observation.text = comparator.map(|c| format!("{c}{}", trim_float(measured.value)));
                observation.reference_range = reference_range(&obx.get(7, 1), &convert);
            }
        }
        Ok(Some(observation))
    }

    /// The unit of OBX-6 (`code^text^system`; either part may be the one the table knows).
    fn obx_unit(&self, obx: &Segment, canonical: &Canonical) -> UnitMatch {
        self.unit_of(canonical, [&*obx.get(6, 1), &*obx.get(6, 2)])
    }
}

/// The number in OBX-5 for NM (or an empty OBX-2, as monitors send), SN (`>^10`, `^2.5`,
/// `<=^0.01`), or an ST that is a plain number; with the comparator when there is one.
fn numeric(obx: &Segment) -> Option<(f64, Option<String>)> {
    let parse = |s: &str| s.trim().parse::<f64>().ok().filter(|v| v.is_finite());
    match &*obx.get(2, 1) {
        "NM" | "" => parse(&obx.get(5, 1)).map(|v| (v, None)),
        "SN" => {
            // comparator ^ num1 ^ separator/suffix ^ num2: a range or ratio is not one number.
            if !obx.get(5, 3).is_empty() || !obx.get(5, 4).is_empty() {
                return None;
            }
            let comparator = obx.get(5, 1);
            let comparator = match &*comparator {
                "" | "=" => None,
                ">" | "<" | ">=" | "<=" | "<>" => Some(comparator.into_owned()),
                _ => return None,
            };
            parse(&obx.get(5, 2)).map(|v| (v, comparator))
        }
        "ST" => {
            let text = obx.get(5, 1);
            let text = text.trim();
            for c in [">=", "<=", ">", "<"] {
                if let Some(rest) = text.strip_prefix(c) {
                    return parse(rest).map(|v| (v, Some(c.to_string())));
                }
            }
            parse(text).map(|v| (v, None))
        }
        _ => None,
    }
}

/// What a coded or text value may be matched on, in order: the code and the text of the
/// primary triplet, then of the alternate one (CWE/CE/CNE/CF), or the whole text (ST/TX/FT,
/// and an empty OBX-2 as monitors send).
fn answer_candidates(obx: &Segment) -> Vec<String> {
    let candidates = match obx.text(2).as_str() {
        "CWE" | "CE" | "CNE" | "CF" => [1, 2, 4, 5].into_iter().map(|c| obx.component(5, c)).collect(),
        "ST" | "TX" | "FT" | "IS" | "ID" | "" => vec![obx.text(5)],
        _ => Vec::new(),
    };
    candidates.into_iter().filter(|c| !c.trim().is_empty()).collect()
}

/// Text of a coded (CWE/CE/CNE/CF: the code, component 1) or string (ST/TX/FT) value.
fn coded_or_text(obx: &Segment) -> Option<String> {
    let text = match obx.text(2).as_str() {
        "CWE" | "CE" | "CNE" | "CF" => obx.component(5, 1),
        "ST" | "TX" | "FT" | "IS" | "ID" => obx.text(5),
        _ => return None,
    };
    let text = text.trim().to_string();
    (!text.is_empty()).then_some(text)
}
