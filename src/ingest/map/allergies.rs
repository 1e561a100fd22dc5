//! Allergies: AL1 segments on any ADT, and ADT^A60 (IAM or AL1) -> an allergies event. Lists
//! are never taken as complete (`replace = false`): a sender that leaves an allergy out of one
//! message must not erase it.

use time::OffsetDateTime;
use vigil_actors::{Allergy, ClinicalEvent, EventKind};

use super::{MapError, Mapper, NO_PID, coded, normalise_drug_name};
use crate::ingest::hl7::{Message, Segment};

impl Mapper {
    /// ADT^A60 -> an allergies event from IAM (or AL1) segments.
    pub fn adt_a60(&self, msg: &Message, received_at: OffsetDateTime) -> Result<Vec<ClinicalEvent>, MapError> {
        let pid = msg.segment("PID").ok_or(NO_PID)?;
        match self.al1_allergies(msg, pid, received_at)? {
            Some(event) => Ok(vec![event]),
            None => Err(MapError::new("IAM", 0, 100, "IAM or AL1 segment is required")),
        }
    }

    /// An allergies event from AL1 and IAM segments, `None` when there are none. IAM rows
    /// whose action code (IAM-6) is D (delete) are left out: the core model has no retraction
    /// for allergies yet, and keeping a deleted allergy is the safe error.
    pub(super) fn al1_allergies(
        &self,
        msg: &Message,
        pid: &Segment,
        received_at: OffsetDateTime,
    ) -> Result<Option<ClinicalEvent>, MapError> {
        let mut allergies = Vec::new();
        let mut seen = false;
        for segment in msg.segments() {
            match segment.name() {
                "AL1" => {
                    seen = true;
                    allergies.extend(allergy(segment));
                }
                "IAM" => {
                    seen = true;
                    if segment.component(6, 1) != "D" {
                        allergies.extend(allergy(segment));
                    }
                }
                _ => {}
            }
        }
        if !seen {
            return Ok(None);
        }
        let event = self.event(pid, received_at, EventKind::Allergies { allergies, replace: false })?;
        Ok(Some(event))
    }
}

/// AL1 and IAM share fields 2..4: type (table 0127), allergen (CWE), severity (table 0128).
fn allergy(segment: &Segment) -> Option<Allergy> {
    let allergen = segment.field(3)?.repetition(1)?;
    let text = [allergen.component(2), allergen.component(5), allergen.component(1)]
        .into_iter()
        .find(|t| !t.trim().is_empty())?;
    let code = coded(&allergen).map(|c| normalise_system(&c));
    Some(Allergy {
        code,
        name: normalise_drug_name(&text),
        kind: segment.component(2, 1),
        severity: segment.component(4, 1),
    })
}

/// RxNorm spelled any of the usual ways becomes `RXNORM`.
fn normalise_system(code: &str) -> String {
    match code.split_once('|') {
        Some((system, c)) if is_rxnorm(system) => format!("RXNORM|{c}"),
        _ => code.to_string(),
    }
}

/// Whether a coding-system name means RxNorm (HL7 table 0396 `RXNORM`, also `RXN` and the FHIR
/// URI), in any letter case.
pub fn is_rxnorm(system: &str) -> bool {
    ["RXNORM", "RXN", "http://www.nlm.nih.gov/research/umls/rxnorm"]
        .iter()
        .any(|s| s.eq_ignore_ascii_case(system.trim()))
}
