//! A device alarm report -> the verdict of the host-side rules `device.alarm` (physiologic and
//! advisory) and `device.technical`, which the patient actor feeds to the same alert lifecycle
//! as the Rhai rules: one alert per (rule, device and alarm id).

use serde_json::json;

use crate::model::{AlarmKind, AlarmPhase, AlarmPriority, AlarmState, Details, DeviceAlarm, DeviceId, Severity};
use crate::ports::{AlertPolicy, RuleOutcome, RuleVerdict};

/// Rule id of alerts raised for physiologic (and advisory) device alarms.
pub const DEVICE_ALARM_RULE: &str = "device.alarm";
/// Rule id of alerts raised for technical device alarms (leads off, probe off).
pub const DEVICE_TECHNICAL_RULE: &str = "device.technical";
/// Rule id of the technical alert raised when a device attached to a patient goes silent.
pub const DEVICE_OFFLINE_RULE: &str = "device.offline";
/// The version these host rules report (they have no source to hash).
pub const DEVICE_RULE_VERSION: &str = "host-1";

/// The device is authoritative about its alarms: an end closes the alert at once (no
/// `clear_for_s` hold), there is no cooldown and no reopening (a new alarm instance carries a
/// new id), and a clinician's resolve holds only while the device repeats exactly that.
const POLICY: AlertPolicy = AlertPolicy { cooldown_s: 0, clear_for_s: 0, reopen_s: 0, hold_until_changed: true };

/// Severity of a device alarm: PH is critical for a physiologic alarm and high for a
/// technical or advisory one (the patient may be fine; the monitoring is not), PM medium, PL
/// low, PN info. A missing priority is shown as high: an alarm that may matter is not hidden.
pub fn alarm_severity(priority: Option<AlarmPriority>, kind: Option<AlarmKind>) -> Severity {
    match priority {
        Some(AlarmPriority::High) if matches!(kind, Some(AlarmKind::Technical | AlarmKind::Advisory)) => Severity::High,
        Some(AlarmPriority::High) => Severity::Critical,
        Some(AlarmPriority::Medium) => Severity::Medium,
        Some(AlarmPriority::Low) => Severity::Low,
        Some(AlarmPriority::None) => Severity::Info,
        None => Severity::High,
    }
}

fn label<T: serde::Serialize>(value: Option<T>) -> serde_json::Value {
    value.map_or(serde_json::Value::Null, |v| serde_json::to_value(v).unwrap_or(serde_json::Value::Null))
}

/// The verdict for one alarm report: start, continue and update raise or update the alert;
/// end (or state off) resolves it.
pub fn alarm_outcome(alarm: &DeviceAlarm) -> RuleOutcome {
    let rule = match alarm.kind {
        Some(AlarmKind::Technical) => DEVICE_TECHNICAL_RULE,
        _ => DEVICE_ALARM_RULE,
    };
    let finding = Some(alarm.finding());
    let mut missing = Vec::new();
    if alarm.priority.is_none() {
        missing.push("priority");
    }
    if alarm.kind.is_none() {
        missing.push("kind");
    }
    if alarm.state.is_none() {
        missing.push("state");
    }
    // No phase in the details: a repeat (continue) that changes nothing writes nothing.
    let details = Details::from_value(&json!({
        "device": alarm.device,
        "alarm_id": alarm.alarm_id,
        "update_counter": alarm.update_counter,
        "event": alarm.event_code,
        "event_text": alarm.event_text,
        "value": alarm.value,
        "state": label(alarm.state),
        "inactivation": alarm.inactivation,
        "priority": label(alarm.priority),
        "kind": label(alarm.kind),
        "missing": missing,
    }));
    let ended = alarm.phase == AlarmPhase::End || alarm.state == Some(AlarmState::Off);
    let verdict = if ended {
        RuleVerdict::Resolve { finding, reason: "the device ended the alarm".into(), details, partial: false }
    } else {
        let mut summary = format!("Device alarm: {}", alarm.event_text);
        if let Some(value) = &alarm.value {
            summary.push_str(&format!(" ({value})"));
        }
        if alarm.state == Some(AlarmState::Latched) {
            summary.push_str(", latched");
        }
        if !missing.is_empty() {
            summary.push_str(&format!(" [{} not sent]", missing.join(", ")));
        }
        RuleVerdict::Fire {
            finding,
            severity: alarm_severity(alarm.priority, alarm.kind),
            score: None,
            summary,
            details,
            partial: false,
        }
    };
    RuleOutcome { rule_id: rule.into(), version: DEVICE_RULE_VERSION.into(), policy: POLICY, verdict }
}

/// The verdict for a device going silent (raise `device.offline`, high: the patient is no
/// longer monitored) or reporting again (resolve it at once).
pub fn silence_outcome(device: &DeviceId, offline: bool, silent_s: i64, interval_s: i64) -> RuleOutcome {
    let finding = Some(device.0.clone());
    let details = Details::from_value(&json!({ "device": device.0, "interval_s": interval_s }));
    let verdict = if offline {
        RuleVerdict::Fire {
            finding,
            severity: Severity::High,
            score: None,
            summary: format!("No data from device {device} for {silent_s} s (expected every {interval_s} s)"),
            details,
            partial: false,
        }
    } else {
        RuleVerdict::Resolve { finding, reason: "the device reports again".into(), details, partial: false }
    };
    RuleOutcome { rule_id: DEVICE_OFFLINE_RULE.into(), version: DEVICE_RULE_VERSION.into(), policy: POLICY, verdict }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alarm(phase: AlarmPhase, kind: Option<AlarmKind>, priority: Option<AlarmPriority>) -> DeviceAlarm {
        DeviceAlarm {
            device: Some("0012345678ABCDEF".into()),
            alarm_id: "AL-1".into(),
            update_counter: Some(1),
            event_code: "MDC|196674".into(),
            event_text: "SpO2 low".into(),
            value: Some("88 %".into()),
            phase,
            state: Some(AlarmState::Active),
            inactivation: Some("enabled".into()),
            priority,
            kind,
        }
    }

    #[test]
    fn priority_and_kind_give_the_severity() {
        use AlarmKind::*;
        use AlarmPriority::*;
        assert_eq!(alarm_severity(Some(High), Some(Physiologic)), Severity::Critical);
        assert_eq!(alarm_severity(Some(High), Some(Technical)), Severity::High);
        assert_eq!(alarm_severity(Some(Medium), Some(Physiologic)), Severity::Medium);
        assert_eq!(alarm_severity(Some(Low), Some(Technical)), Severity::Low);
        assert_eq!(alarm_severity(Some(AlarmPriority::None), Some(Advisory)), Severity::Info);
        assert_eq!(alarm_severity(Option::None, Some(Physiologic)), Severity::High, "missing priority is shown");
    }

    #[test]
    fn start_fires_end_resolves_and_technical_alarms_have_their_own_rule() {
        let start = alarm_outcome(&alarm(AlarmPhase::Start, Some(AlarmKind::Physiologic), Some(AlarmPriority::Medium)));
        assert_eq!(start.rule_id, DEVICE_ALARM_RULE);
        assert_eq!(start.policy.clear_for_s, 0);
        match start.verdict {
            RuleVerdict::Fire { finding, severity, summary, .. } => {
                assert_eq!(finding.as_deref(), Some("0012345678ABCDEF|AL-1"));
                assert_eq!(severity, Severity::Medium);
                assert_eq!(summary, "Device alarm: SpO2 low (88 %)");
            }
            other => panic!("expected a fire, got {other:?}"),
        }
        let end = alarm_outcome(&alarm(AlarmPhase::End, Some(AlarmKind::Technical), Some(AlarmPriority::Low)));
        assert_eq!(end.rule_id, DEVICE_TECHNICAL_RULE);
        assert!(matches!(end.verdict, RuleVerdict::Resolve { partial: false, .. }));
        let mut off = alarm(AlarmPhase::Continue, None, None);
        off.state = Some(AlarmState::Off);
        assert!(matches!(alarm_outcome(&off).verdict, RuleVerdict::Resolve { .. }));
    }

    #[test]
    fn missing_facets_are_said_to_be_missing() {
        let outcome = alarm_outcome(&alarm(AlarmPhase::Start, None, None));
        let RuleVerdict::Fire { summary, details, severity, .. } = outcome.verdict else { panic!("expected a fire") };
        assert_eq!(severity, Severity::High);
        assert!(summary.ends_with("[priority, kind not sent]"), "{summary}");
        assert_eq!(details.to_value()["missing"], json!(["priority", "kind"]));
    }

    #[test]
    fn start_continue_update_end_raise_keep_change_and_resolve_one_alert() {
        use crate::model::{AlertStatus, PatientId};
        use crate::patient::PatientState;
        let mut state = PatientState::new(PatientId("p1".into()));
        let t0 = time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
        let report = |phase, priority| alarm(phase, Some(AlarmKind::Physiologic), Some(priority));
        let raised = state.decide(vec![alarm_outcome(&report(AlarmPhase::Start, AlarmPriority::Medium))], t0);
        assert_eq!(raised.len(), 1);
        let (alert, notify) = &raised[0];
        assert!(notify);
        assert_eq!((alert.rule.id.as_str(), alert.severity), (DEVICE_ALARM_RULE, Severity::Medium));
        let id = alert.id.clone();
        let same = state.decide(vec![alarm_outcome(&report(AlarmPhase::Continue, AlarmPriority::Medium))], t0);
        assert!(same.is_empty(), "a continue that changes nothing keeps the alert as it is");
        let updated = state.decide(vec![alarm_outcome(&report(AlarmPhase::Update, AlarmPriority::High))], t0);
        assert_eq!(updated.len(), 1);
        assert_eq!(
            (updated[0].0.id.clone(), updated[0].0.severity, updated[0].1),
            (id.clone(), Severity::Critical, true)
        );
        let ended = state.decide(vec![alarm_outcome(&report(AlarmPhase::End, AlarmPriority::High))], t0);
        assert_eq!(ended.len(), 1, "an end resolves at once, with no clear-time hold");
        assert_eq!((ended[0].0.id.clone(), ended[0].0.status), (id, AlertStatus::Resolved));
        assert!(state.open_alerts.is_empty());
    }
}
