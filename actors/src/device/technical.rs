//! Technical conditions a device reports inside its observations (leads off, probe off: MDC
//! event codes in PCD-01 OBX rows or in a FHIR Observation), as opposed to alarms it reports
//! through PCD-04. The device actor keeps which are active: a new one raises
//! `device.technical` for the device's patient, and the next report carrying valid data
//! without it resolves it there.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::state::Attachment;
use crate::model::{AlarmKind, AlarmPhase, AlarmState, ClinicalEvent, DeviceAlarm, DeviceId, EventKind};

/// Conditions one report may carry, at most (a bound on the alerts one message can raise).
pub const MAX_CONDITIONS: usize = 8;
/// Conditions a device keeps active at most.
pub const MAX_ACTIVE: usize = 16;

/// One technical condition as reported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TechnicalCondition {
    /// The event, `system|code` (e.g. `MDC|196876`).
    pub code: String,
    /// As the sender named it (e.g. `MDC_EVT_LEAD_DISCONN`).
    pub text: String,
    /// Where in the device (OBX-4 containment, or the FHIR component), empty when not sent.
    pub source: String,
}

impl TechnicalCondition {
    /// The alarm id of its alert (with the device, the alert's finding).
    pub fn alarm_id(&self) -> String {
        if self.source.is_empty() {
            format!("tech:{}", self.code)
        } else {
            format!("tech:{}@{}", self.code, self.source)
        }
    }
}

/// What a report said about the device's technical state.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TechnicalReport {
    /// Conditions present now.
    pub conditions: Vec<TechnicalCondition>,
    /// The report carried at least one valid measurement: conditions it does not repeat are
    /// over.
    pub valid_data: bool,
}

/// The active conditions of one device, each with the patient its alert was raised for.
#[derive(Debug, Default)]
pub struct Technical {
    active: Vec<(TechnicalCondition, Attachment)>,
}

impl Technical {
    /// Apply `report` at `at` for the device's current `patient`: the events raising new
    /// conditions (for `patient`; none when the device has none) and resolving those over
    /// (for the patient they were raised for).
    pub fn report(
        &mut self,
        device: &DeviceId,
        at: OffsetDateTime,
        report: &TechnicalReport,
        patient: Option<&Attachment>,
    ) -> Vec<ClinicalEvent> {
        let mut events = Vec::new();
        if report.valid_data {
            let (over, still): (Vec<_>, Vec<_>) = self
                .active
                .drain(..)
                .partition(|(c, _)| !report.conditions.iter().any(|n| n.alarm_id() == c.alarm_id()));
            self.active = still;
            for (condition, raised_for) in over {
                events.push(raised_for.event(at, alarm(device, &condition, AlarmPhase::End, AlarmState::Off)));
            }
        }
        let Some(patient) = patient else { return events };
        for condition in report.conditions.iter().take(MAX_CONDITIONS) {
            let known = self.active.iter().any(|(c, _)| c.alarm_id() == condition.alarm_id());
            if known || self.active.len() >= MAX_ACTIVE {
                continue;
            }
            self.active.push((condition.clone(), patient.clone()));
            events.push(patient.event(at, alarm(device, condition, AlarmPhase::Start, AlarmState::Active)));
        }
        events
    }

    /// Conditions active now.
    pub fn active(&self) -> usize {
        self.active.len()
    }
}

fn alarm(device: &DeviceId, condition: &TechnicalCondition, phase: AlarmPhase, state: AlarmState) -> EventKind {
    EventKind::DeviceAlarm {
        alarm: DeviceAlarm {
            device: Some(device.0.clone()),
            alarm_id: condition.alarm_id(),
            update_counter: None,
            event_code: condition.code.clone(),
            event_text: condition.text.clone(),
            value: None,
            phase,
            state: Some(state),
            inactivation: None,
            // Not sent with an observation: shown as high, with "[priority not sent]".
            priority: None,
            kind: Some(AlarmKind::Technical),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Demographics, PatientId, PatientKey, Phi};

    fn patient(id: &str) -> Attachment {
        Attachment {
            patient_id: PatientId(id.into()),
            patient: PatientKey { authority: "HOSP".into(), mrn: Phi(format!("MRN-{id}")) },
            demographics: Demographics::default(),
            location: None,
        }
    }

    fn leads_off() -> TechnicalCondition {
        TechnicalCondition { code: "MDC|196876".into(), text: "MDC_EVT_LEAD_DISCONN".into(), source: "1.1.1".into() }
    }

    fn phases(events: &[ClinicalEvent]) -> Vec<(String, AlarmPhase)> {
        events
            .iter()
            .map(|e| match &e.kind {
                EventKind::DeviceAlarm { alarm } => (e.patient_id.0.clone(), alarm.phase),
                other => panic!("not an alarm: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_condition_raises_once_and_valid_data_without_it_resolves_it_for_the_same_patient() {
        let mut technical = Technical::default();
        let device = DeviceId("MON".into());
        let t0 = time::macros::datetime!(2026-01-01 00:00 UTC);
        let off = TechnicalReport { conditions: vec![leads_off()], valid_data: false };
        let raised = technical.report(&device, t0, &off, Some(&patient("p1")));
        assert_eq!(phases(&raised), vec![("p1".into(), AlarmPhase::Start)]);
        assert!(technical.report(&device, t0, &off, Some(&patient("p1"))).is_empty(), "a repeat raises nothing");
        let still_off = TechnicalReport { conditions: vec![leads_off()], valid_data: true };
        assert!(technical.report(&device, t0, &still_off, Some(&patient("p1"))).is_empty(), "repeated with data");
        let nothing = TechnicalReport { conditions: vec![], valid_data: false };
        assert!(technical.report(&device, t0, &nothing, Some(&patient("p1"))).is_empty(), "no data: not over");
        let back = TechnicalReport { conditions: vec![], valid_data: true };
        let resolved = technical.report(&device, t0, &back, Some(&patient("p2")));
        assert_eq!(phases(&resolved), vec![("p1".into(), AlarmPhase::End)], "resolved where it was raised");
        assert_eq!(technical.active(), 0);
    }

    #[test]
    fn a_device_with_no_patient_raises_nothing() {
        let mut technical = Technical::default();
        let off = TechnicalReport { conditions: vec![leads_off()], valid_data: false };
        let t0 = time::macros::datetime!(2026-01-01 00:00 UTC);
        assert!(technical.report(&DeviceId("MON".into()), t0, &off, None).is_empty());
        assert_eq!(technical.active(), 0);
    }
}
