//! Pharmacy: RDE^O11 and OMP^O09 -> medication order events (one per ORC group), RAS^O17 ->
//! administration events (one per RXA). Drugs are keyed by RxNorm when the sender coded them so,
//! and by a normalised name always.

use time::OffsetDateTime;
use vigil_actors::{ClinicalEvent, EventKind, Medication, OrderAction};

use super::allergies::is_rxnorm;
use super::{MapError, Mapper, NO_PID};
use crate::ingest::hl7::{Message, Segment};

/// Words that describe a dose form or route, dropped from the end of a drug name.
const FORM_WORDS: &[&str] = &[
    "tablet",
    "tablets",
    "tab",
    "tabs",
    "capsule",
    "capsules",
    "cap",
    "caps",
    "injection",
    "injectable",
    "solution",
    "suspension",
    "syrup",
    "cream",
    "ointment",
    "patch",
    "inhaler",
    "powder",
    "oral",
    "iv",
    "im",
    "sc",
    "po",
    "ivpb",
    "infusion",
    "vial",
    "bag",
    "premix",
    "er",
    "xr",
    "sr",
    "ec",
    "extended",
    "release",
    "delayed",
    "film",
    "coated",
];

/// A drug name for matching: lowercase, single spaces, no strength or form
/// (`"Amoxicillin  500 MG Oral Tablet"` -> `"amoxicillin"`).
pub fn normalise_drug_name(text: &str) -> String {
    let lower = text.to_lowercase();
    let words: Vec<&str> = lower.split_whitespace().collect();
    // The strength starts at the first word that begins with a digit (not the first word:
    // "0.9% sodium chloride" keeps its name).
    let end =
        words.iter().skip(1).position(|w| w.starts_with(|c: char| c.is_ascii_digit())).map_or(words.len(), |i| i + 1);
    let mut name: Vec<&str> = words.get(..end).map(<[&str]>::to_vec).unwrap_or_default();
    while name.len() > 1
        && name.last().is_some_and(|w| FORM_WORDS.contains(&w.trim_matches(|c: char| !c.is_alphanumeric())))
    {
        name.pop();
    }
    let joined = name.join(" ");
    if joined.is_empty() { words.join(" ") } else { joined }
}

impl Mapper {
    /// RDE^O11 (drug in RXE-2) or OMP^O09 (drug in RXO-1): one event per ORC group whose
    /// order control (ORC-1) is NW, XO, DC or CA. Other controls (SC status changes, OK, RE,
    /// ...) carry nothing the medication list needs and are skipped.
    pub fn pharmacy_order(
        &self,
        msg: &Message,
        drug_segment: &'static str,
        drug_field: usize,
        received_at: OffsetDateTime,
    ) -> Result<Vec<ClinicalEvent>, MapError> {
        let pid = msg.segment("PID").ok_or(NO_PID)?;
        let mut events = Vec::new();
        let mut seen_orc = false;
        for (orc, group) in groups(msg) {
            seen_orc = true;
            let action = match orc.text(1).as_str() {
                "NW" => OrderAction::New,
                "XO" => OrderAction::Change,
                "DC" => OrderAction::Discontinue,
                "CA" => OrderAction::Cancel,
                "" => return Err(MapError::new("ORC", 1, 101, "ORC-1 order control is required")),
                other => {
                    tracing::info!(control_id = %msg.control_id(), order_control = other, "order group skipped: order control not applied to the medication list");
                    continue;
                }
            };
            let drug = group.iter().find(|s| s.name() == drug_segment).ok_or(MapError::new(
                drug_segment,
                0,
                100,
                "drug segment (RXE or RXO) is required in each order group",
            ))?;
            let medication = medication(orc, drug, drug_field).ok_or(MapError::new(
                drug_segment,
                drug_field as u32,
                101,
                "drug code or name is required",
            ))?;
            if medication.order_id.is_empty() {
                return Err(MapError::new("ORC", 2, 101, "ORC-2 or ORC-3 order number is required"));
            }
            events.push(self.event(pid, received_at, EventKind::MedicationOrder { action, medication })?);
        }
        if !seen_orc {
            return Err(MapError::new("ORC", 0, 100, "ORC segment is required"));
        }
        Ok(events)
    }

    /// RAS^O17: one administration event per RXA (RXA-5 drug, RXA-3 start of administration).
    /// RXA-20 completion status RE (refused) or NA (not administered) and RXA-21 action D
    /// (deleted) are not administrations and are skipped.
    pub fn ras_o17(&self, msg: &Message, received_at: OffsetDateTime) -> Result<Vec<ClinicalEvent>, MapError> {
        let pid = msg.segment("PID").ok_or(NO_PID)?;
        let mut events = Vec::new();
        let mut seen_rxa = false;
        for (orc, group) in groups(msg) {
            for rxa in group.iter().filter(|s| s.name() == "RXA") {
                seen_rxa = true;
                if matches!(rxa.text(20).as_str(), "RE" | "NA") || rxa.text(21) == "D" {
                    continue;
                }
                let medication = medication(orc, rxa, 5).ok_or(MapError::new(
                    "RXA",
                    5,
                    101,
                    "RXA-5 administered code is required",
                ))?;
                let given_at = self.timestamp(&rxa.text(3)).ok_or(MapError::new(
                    "RXA",
                    3,
                    101,
                    "RXA-3 start of administration is required",
                ))?;
                events.push(self.event(pid, received_at, EventKind::Administration { medication, given_at })?);
            }
        }
        if !seen_rxa {
            return Err(MapError::new("RXA", 0, 100, "RXA segment is required"));
        }
        Ok(events)
    }
}

/// ORC groups: each ORC with the segments up to the next ORC.
fn groups(msg: &Message) -> Vec<(&Segment, Vec<&Segment>)> {
    let mut out: Vec<(&Segment, Vec<&Segment>)> = Vec::new();
    for segment in msg.segments() {
        if segment.name() == "ORC" {
            out.push((segment, Vec::new()));
        } else if let Some((_, group)) = out.last_mut() {
            group.push(segment);
        }
    }
    out
}

/// The drug of `segment`-`field` (CWE: code^text^system^alt code^alt text^alt system) on the
/// order of `orc`; `None` when it has neither an RxNorm code nor a name.
fn medication(orc: &Segment, segment: &Segment, field: usize) -> Option<Medication> {
    let placer = orc.component(2, 1);
    let order_id = if placer.is_empty() { orc.component(3, 1) } else { placer };
    let rep = segment.field(field)?.repetition(1)?;
    let rxnorm = [(1, 3), (4, 6)]
        .into_iter()
        .find(|&(_, system)| is_rxnorm(&rep.component(system)))
        .map(|(code, _)| rep.component(code))
        .filter(|c| !c.is_empty());
    let text = [rep.component(2), rep.component(5)].into_iter().find(|t| !t.trim().is_empty());
    let name = match (&text, &rxnorm) {
        (Some(t), _) => normalise_drug_name(t),
        (None, Some(_)) => String::new(),
        (None, None) => return None,
    };
    Some(Medication { order_id, rxnorm, name })
}

#[cfg(test)]
mod tests {
    use super::normalise_drug_name;

    #[test]
    fn drug_names_lose_strength_and_form() {
        assert_eq!(normalise_drug_name("Amoxicillin  500 MG Oral Tablet"), "amoxicillin");
        assert_eq!(normalise_drug_name("Vancomycin 1 g IV"), "vancomycin");
        assert_eq!(normalise_drug_name("piperacillin-tazobactam 4.5 g"), "piperacillin-tazobactam");
        assert_eq!(normalise_drug_name("Metoprolol tartrate tablet"), "metoprolol tartrate");
        assert_eq!(normalise_drug_name("0.9% Sodium Chloride 1000 mL"), "0.9% sodium chloride");
        assert_eq!(normalise_drug_name("Penicillin"), "penicillin");
    }
}
