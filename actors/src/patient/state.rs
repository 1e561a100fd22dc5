//! A patient actor's state: identity, location, bounded windows of recent values and the
//! alerts currently open per rule.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use time::{Duration, OffsetDateTime};

use crate::model::{
    Alert, AlertId, AlertPatient, AlertStatus, ClinicalEvent, Demographics, EventKind, Location,
    PatientId, PatientKey, RuleRef,
};
use crate::ports::{PatientView, RuleOutcome, RuleVerdict, Sample};

/// Samples older than this (relative to the newest) leave the window.
pub const WINDOW_MAX_AGE: Duration = Duration::hours(24);
/// At most this many samples are kept per canonical name (24 h at one a minute, with margin).
pub const WINDOW_MAX_SAMPLES: usize = 2048;

/// The live state of one patient.
#[derive(Debug)]
pub struct PatientState {
    /// Opaque id.
    pub id: PatientId,
    /// Identity as last sent.
    pub key: Option<PatientKey>,
    /// Demographics as last sent.
    pub demographics: Demographics,
    /// What rules see. Held in an `Arc` that the actor owns alone between evaluations, so
    /// `Arc::make_mut` updates it in place without copying the window.
    pub view: Arc<PatientView>,
    /// Open (not resolved) alerts by rule id.
    pub open_alerts: HashMap<String, Alert>,
}

impl PatientState {
    /// Empty state for a patient seen for the first time.
    pub fn new(id: PatientId) -> Self {
        let view = PatientView { patient_id: Some(id.clone()), ..PatientView::default() };
        PatientState {
            id,
            key: None,
            demographics: Demographics::default(),
            view: Arc::new(view),
            open_alerts: HashMap::new(),
        }
    }

    /// Fold an event into the state.
    pub fn apply(&mut self, event: &ClinicalEvent) {
        self.key = Some(event.patient.clone());
        if !event.demographics.name.expose().is_empty() {
            self.demographics = event.demographics.clone();
        }
        let view = Arc::make_mut(&mut self.view);
        if let Some(location) = &event.location {
            view.location = location.clone();
        }
        if !event.demographics.sex.is_empty() {
            view.sex = event.demographics.sex.clone();
        }
        match &event.kind {
            EventKind::Observations { observations } => {
                for o in observations {
                    let series = view.series.entry(o.name.clone()).or_default();
                    insert_ordered(series, Sample { at: o.observed_at, value: o.value });
                }
            }
        }
    }

    /// Prepare the view for evaluation at `now`.
    pub fn view_at(&mut self, now: OffsetDateTime) -> Arc<PatientView> {
        Arc::make_mut(&mut self.view).now = Some(now);
        Arc::clone(&self.view)
    }

    /// Turn rule outcomes into alert changes, applying dedup per (patient, rule): a re-fire of
    /// an open alert updates it; a resolve closes it; nothing changes when nothing differs.
    pub fn decide(&mut self, outcomes: Vec<RuleOutcome>, now: OffsetDateTime) -> Vec<Alert> {
        let mut changes = Vec::new();
        for outcome in outcomes {
            match outcome.verdict {
                RuleVerdict::Fire { severity, score, summary, details } => {
                    let rule = RuleRef { id: outcome.rule_id.clone(), version: outcome.version };
                    let alert = match self.open_alerts.get(&outcome.rule_id) {
                        Some(open) => {
                            if open.severity == severity
                                && open.score == score
                                && open.summary == summary
                                && open.details == details
                            {
                                continue;
                            }
                            Alert {
                                rule,
                                severity,
                                score,
                                summary,
                                details,
                                patient: self.alert_patient(),
                                updated_at: now,
                                ..open.clone()
                            }
                        }
                        None => Alert {
                            id: AlertId(format!(
                                "{}-{}-{}",
                                self.id,
                                outcome.rule_id,
                                now.unix_timestamp_nanos() / 1_000_000
                            )),
                            patient: self.alert_patient(),
                            rule,
                            severity,
                            status: AlertStatus::Active,
                            score,
                            summary,
                            details,
                            raised_at: now,
                            updated_at: now,
                        },
                    };
                    self.open_alerts.insert(outcome.rule_id, alert.clone());
                    changes.push(alert);
                }
                RuleVerdict::Resolve { reason } => {
                    let Some(mut alert) = self.open_alerts.remove(&outcome.rule_id) else {
                        continue;
                    };
                    alert.status = AlertStatus::Resolved;
                    alert.updated_at = now;
                    if let serde_json::Value::Object(map) = &mut alert.details {
                        map.insert("resolved_reason".into(), reason.into());
                    }
                    changes.push(alert);
                }
                RuleVerdict::Quiet => {}
            }
        }
        changes
    }

    fn alert_patient(&self) -> AlertPatient {
        let location: &Location = &self.view.location;
        AlertPatient {
            id: self.id.clone(),
            mrn: self.key.as_ref().map(|k| k.mrn.clone()).unwrap_or_default(),
            name: self.demographics.name.clone(),
            unit: location.unit.clone(),
            bed: location.bed.clone(),
        }
    }
}

/// Insert keeping time order (monitors resend and interfaces reorder), then trim the window.
fn insert_ordered(series: &mut VecDeque<Sample>, sample: Sample) {
    let pos = series.iter().rposition(|s| s.at <= sample.at).map_or(0, |p| p + 1);
    if pos > 0 && series.get(pos - 1).is_some_and(|s| s.at == sample.at) {
        // The same measurement sent again replaces the old one instead of doubling it.
        if let Some(slot) = series.get_mut(pos - 1) {
            *slot = sample;
        }
    } else {
        series.insert(pos, sample);
    }
    let newest = series.back().map(|s| s.at);
    while series.len() > WINDOW_MAX_SAMPLES
        || newest.zip(series.front()).is_some_and(|(n, f)| n - f.at > WINDOW_MAX_AGE)
    {
        series.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn window_stays_ordered_bounded_and_deduplicated() {
        let mut s = VecDeque::new();
        let t0 = datetime!(2026-01-01 00:00 UTC);
        insert_ordered(&mut s, Sample { at: t0 + Duration::minutes(2), value: 2.0 });
        insert_ordered(&mut s, Sample { at: t0, value: 0.0 });
        insert_ordered(&mut s, Sample { at: t0 + Duration::minutes(1), value: 1.0 });
        insert_ordered(&mut s, Sample { at: t0 + Duration::minutes(1), value: 1.5 });
        let values: Vec<f64> = s.iter().map(|x| x.value).collect();
        assert_eq!(values, vec![0.0, 1.5, 2.0]);
        insert_ordered(&mut s, Sample { at: t0 + Duration::hours(25), value: 9.0 });
        assert_eq!(s.len(), 1, "samples older than 24 h before the newest are dropped");
        for i in 0..(WINDOW_MAX_SAMPLES + 10) {
            insert_ordered(&mut s, Sample { at: t0 + Duration::hours(25) + Duration::seconds(i as i64), value: 0.0 });
        }
        assert_eq!(s.len(), WINDOW_MAX_SAMPLES);
    }
}
