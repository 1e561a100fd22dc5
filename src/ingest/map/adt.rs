//! ADT -> census events (A01 admit, A02 transfer, A03 discharge, A04 register, A08 update,
//! A11/A12/A13 cancels), merges (A40), with an allergies event when AL1 segments ride along.

use time::OffsetDateTime;
use vigil_actors::{CensusAction, ClinicalEvent, EventKind};

use super::{MapError, Mapper, NO_PID, location};
use crate::ingest::hl7::Message;

impl Mapper {
    /// The census action of an ADT trigger this mapper handles as a census change.
    pub fn census_action(trigger: &str) -> Option<CensusAction> {
        Some(match trigger {
            "A01" => CensusAction::Admit,
            "A02" => CensusAction::Transfer,
            "A03" => CensusAction::Discharge,
            "A04" => CensusAction::Register,
            "A08" => CensusAction::Update,
            "A11" => CensusAction::CancelAdmit,
            "A12" => CensusAction::CancelTransfer,
            "A13" => CensusAction::CancelDischarge,
            _ => return None,
        })
    }

    /// ADT census trigger -> a census event, then an allergies event when AL1 segments are
    /// present. Location: PV1-3; for A12 (cancel transfer) the prior location PV1-6 the
    /// patient returns to; none for A11 (the admission never happened).
    pub fn adt_census(
        &self,
        msg: &Message,
        action: CensusAction,
        received_at: OffsetDateTime,
    ) -> Result<Vec<ClinicalEvent>, MapError> {
        let pid = msg.segment("PID").ok_or(NO_PID)?;
        let pv1 = msg.segment("PV1").ok_or(MapError::new("PV1", 0, 100, "PV1 segment is required"))?;
        let non_empty = |s: String| Some(s).filter(|s| !s.trim().is_empty());
        let kind = EventKind::Census {
            action,
            attending: non_empty(pv1.component(7, 1)),
            encounter: non_empty(pv1.component(19, 1)),
        };
        let mut census = self.event(pid, received_at, kind)?;
        census.location = match action {
            CensusAction::CancelTransfer => Some(location(pv1, 6).ok_or(MapError::new(
                "PV1",
                6,
                101,
                "PV1-6 prior location is required to cancel a transfer",
            ))?),
            CensusAction::CancelAdmit => None,
            _ => location(pv1, 3),
        };
        let mut events = vec![census];
        if let Some(allergies) = self.al1_allergies(msg, pid, received_at)? {
            events.push(allergies);
        }
        Ok(events)
    }

    /// ADT^A40: for each PID/MRG pair, the MRG-1 identity is merged into the PID one.
    pub fn adt_merge(&self, msg: &Message, received_at: OffsetDateTime) -> Result<Vec<ClinicalEvent>, MapError> {
        let mut events = Vec::new();
        let mut pid = None;
        for segment in msg.segments() {
            match segment.name() {
                "PID" => pid = Some(segment),
                "MRG" => {
                    let survivor = pid.ok_or(NO_PID)?;
                    let prior = self.identity(
                        segment,
                        1,
                        MapError::new("MRG", 1, 101, "MRG-1 has no prior identifier of the configured MRN type"),
                    )?;
                    let prior_id = self.patient_id(&prior);
                    let event =
                        self.event(survivor, received_at, EventKind::Merge { prior, prior_id: prior_id.clone() })?;
                    if event.patient_id == prior_id {
                        return Err(MapError::new("MRG", 1, 205, "MRG-1 names the surviving patient"));
                    }
                    events.push(event);
                }
                _ => {}
            }
        }
        if pid.is_none() {
            return Err(NO_PID);
        }
        if events.is_empty() {
            return Err(MapError::new("MRG", 0, 100, "MRG segment is required"));
        }
        Ok(events)
    }
}
