//! A patient actor's state: identity, location, bounded windows of recent values and the
//! alerts currently open per rule.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use time::{Duration, OffsetDateTime};

use crate::model::{
    Actioned, Alert, AlertAction, AlertId, Comment, Escalation, Phi, Resolution, AlertPatient, AlertStatus, CensusAction, ClinicalEvent, Demographics,
    EventKind, LatestValue, Location, Medication, Observation, OrderAction, PatientId, PatientKey,
    PatientSummary, TrendPoint,
    ResultStatus, RuleRef, Severity,
};
use crate::ports::{ActiveMedication, CodedSample, PatientView, RuleOutcome, RuleVerdict, Sample};

/// Why an action on an alert was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActError {
    /// No open alert with that id for this patient (never raised, or already resolved).
    #[error("alert is not open")]
    NotOpen,
    /// Acknowledged already (or, for escalation, no longer waiting for acknowledgement).
    #[error("alert is already acknowledged")]
    AlreadyAcknowledged,
    /// The alert holds the most comments it may.
    #[error("alert already has {MAX_COMMENTS} comments")]
    TooManyComments,
}

/// Comments kept on one alert: the alert travels whole to every console, so it stays bounded.
pub const MAX_COMMENTS: usize = 200;

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
    /// When each rule's last alert was resolved, and at what severity: the start of its
    /// cooldown (one entry per rule that ever resolved here). Kept in memory: a restarted
    /// actor starts with no cooldowns running.
    pub resolved: HashMap<String, (OffsetDateTime, Severity)>,
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
            resolved: HashMap::new(),
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
                    apply_observation(view, o);
                }
            }
            EventKind::Census { action, .. } => match action {
                CensusAction::Discharge => view.discharged = true,
                CensusAction::CancelDischarge
                | CensusAction::Admit
                | CensusAction::Register
                | CensusAction::Transfer
                | CensusAction::CancelTransfer => view.discharged = false,
                CensusAction::CancelAdmit => {
                    view.location = Location::default();
                    view.discharged = true;
                }
                CensusAction::Update => {}
            },
            // The prior record's history is folded in by the actor, which reads it from the store.
            EventKind::Merge { .. } => {}
            EventKind::MedicationOrder { action, medication } => match action {
                OrderAction::New | OrderAction::Change => {
                    upsert_medication(view, medication, event.received_at);
                }
                OrderAction::Discontinue | OrderAction::Cancel => {
                    view.medications.retain(|m| m.medication.order_id != medication.order_id);
                }
            },
            EventKind::Administration { medication, given_at } => {
                upsert_medication(view, medication, *given_at);
            }
            EventKind::Allergies { allergies, replace } => {
                if *replace {
                    view.allergies.clear();
                }
                for allergy in allergies {
                    if !view.allergies.iter().any(|a| a.name == allergy.name && a.code == allergy.code) {
                        view.allergies.push(allergy.clone());
                    }
                }
            }
        }
    }

    /// Fold in an event of another record (a merge): its values, medications and allergies,
    /// but not its identity, demographics or location.
    pub fn apply_history(&mut self, event: &ClinicalEvent) {
        let keep = (self.key.clone(), self.demographics.clone(), self.view.location.clone());
        self.apply(event);
        (self.key, self.demographics) = (keep.0, keep.1);
        Arc::make_mut(&mut self.view).location = keep.2;
    }

    /// The console's summary of this patient at `now`.
    pub fn summary(&self, now: OffsetDateTime) -> PatientSummary {
        let view = &self.view;
        let mut latest = BTreeMap::new();
        let mut trends = BTreeMap::new();
        for (name, series) in &view.series {
            if let Some(s) = series.back() {
                latest.insert(name.clone(), LatestValue { value: Some(s.value), text: None, at: s.at });
            }
            // At most ~300 points: keep every k-th sample so a 24 h minute-by-minute series
            // draws the same shape at a fraction of the payload.
            let step = series.len().div_ceil(300).max(1);
            let points: Vec<TrendPoint> =
                series.iter().step_by(step).map(|s| (s.at.unix_timestamp(), s.value)).collect();
            trends.insert(name.clone(), points);
        }
        for (name, series) in &view.coded {
            if let Some(s) = series.back() {
                latest.insert(name.clone(), LatestValue { value: None, text: Some(s.text.clone()), at: s.at });
            }
        }
        PatientSummary {
            id: self.id.clone(),
            mrn: self.key.as_ref().map(|k| k.mrn.clone()).unwrap_or_default(),
            name: self.demographics.name.clone(),
            age_years: age_years(self.demographics.birth_date.expose(), now),
            sex: view.sex.clone(),
            location: view.location.clone(),
            discharged: view.discharged,
            latest,
            trends,
            medications: view.medications.iter().map(|m| m.medication.clone()).collect(),
            allergies: view.allergies.clone(),
            open_alerts: self.open_alerts.values().cloned().collect(),
            scores: BTreeMap::new(),
        }
    }

    /// The view at `now` with no triggering event (for on-demand scores).
    pub fn view_now(&mut self, now: OffsetDateTime) -> Arc<PatientView> {
        let view = Arc::make_mut(&mut self.view);
        view.now = Some(now);
        view.new_order = None;
        Arc::clone(&self.view)
    }

    /// Prepare the view for evaluating `event` at `now`.
    pub fn view_at(&mut self, now: OffsetDateTime, event: &ClinicalEvent) -> Arc<PatientView> {
        let age = age_years(self.demographics.birth_date.expose(), now);
        let open: Vec<(String, Severity)> =
            self.open_alerts.iter().map(|(rule, a)| (rule.clone(), a.severity)).collect();
        let view = Arc::make_mut(&mut self.view);
        view.now = Some(now);
        view.age_years = age;
        view.open_alerts = open;
        view.new_order = match &event.kind {
            EventKind::MedicationOrder { action: OrderAction::New | OrderAction::Change, medication } => {
                Some(medication.clone())
            }
            _ => None,
        };
        Arc::clone(&self.view)
    }

    /// Turn rule outcomes into alert changes, applying dedup per (patient, rule): a re-fire of
    /// an open alert updates it (quietly, unless its severity rises, which re-notifies and
    /// asks for a new acknowledgement); a resolve closes it; nothing changes when nothing
    /// differs. A new alert within the rule's cooldown after its last one was resolved is held
    /// back unless its severity is higher. Each change comes with whether consoles should
    /// notify.
    pub fn decide(&mut self, outcomes: Vec<RuleOutcome>, now: OffsetDateTime) -> Vec<(Alert, bool)> {
        let mut changes = Vec::new();
        for outcome in outcomes {
            match outcome.verdict {
                RuleVerdict::Fire { severity, .. } if self.cooling_down(&outcome.rule_id, outcome.cooldown_s, severity, now) => {}
                RuleVerdict::Fire { severity, score, summary, details } => {
                    let rule = RuleRef { id: outcome.rule_id.clone(), version: outcome.version };
                    let (alert, notify) = match self.open_alerts.get(&outcome.rule_id) {
                        Some(open) => {
                            if open.severity == severity
                                && open.score == score
                                && open.summary == summary
                                && open.details == details
                            {
                                continue;
                            }
                            let rose = severity > open.severity;
                            let mut alert = Alert {
                                rule,
                                severity,
                                score,
                                summary,
                                details,
                                patient: self.alert_patient(),
                                updated_at: now,
                                ..open.clone()
                            };
                            if rose {
                                alert.status = AlertStatus::Active;
                                alert.acknowledged = None;
                            }
                            (alert, rose)
                        }
                        None => (
                            Alert {
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
                                acknowledged: None,
                                resolved: None,
                                escalation: None,
                                comments: Vec::new(),
                            },
                            true,
                        ),
                    };
                    self.open_alerts.insert(outcome.rule_id, alert.clone());
                    changes.push((alert, notify));
                }
                RuleVerdict::Resolve { reason, .. } => {
                    let Some(mut alert) = self.open_alerts.remove(&outcome.rule_id) else {
                        continue;
                    };
                    alert.status = AlertStatus::Resolved;
                    alert.updated_at = now;
                    alert.resolved = Some(Resolution { by: format!("rule:{}", outcome.rule_id), at: now, reason });
                    self.resolved.insert(outcome.rule_id, (now, alert.severity));
                    changes.push((alert, false));
                }
                RuleVerdict::Quiet => {}
            }
        }
        changes
    }

    /// Apply a clinician's or the escalation timer's action to an open alert.
    pub fn act(
        &mut self,
        alert_id: &AlertId,
        action: AlertAction,
        now: OffsetDateTime,
    ) -> Result<(Alert, bool), ActError> {
        let rule_id = self
            .open_alerts
            .iter()
            .find(|(_, a)| &a.id == alert_id)
            .map(|(rule, _)| rule.clone())
            .ok_or(ActError::NotOpen)?;
        let Some(alert) = self.open_alerts.get_mut(&rule_id) else { return Err(ActError::NotOpen) };
        let notify = match action {
            AlertAction::Acknowledge { by } => {
                if alert.status == AlertStatus::Acknowledged {
                    return Err(ActError::AlreadyAcknowledged);
                }
                alert.status = AlertStatus::Acknowledged;
                alert.acknowledged = Some(Actioned { by, at: now });
                false
            }
            AlertAction::Resolve { by, reason } => {
                alert.status = AlertStatus::Resolved;
                alert.resolved = Some(Resolution { by, at: now, reason });
                false
            }
            AlertAction::Comment { by, text } => {
                if alert.comments.len() >= MAX_COMMENTS {
                    return Err(ActError::TooManyComments);
                }
                alert.comments.push(Comment { by, at: now, text: Phi(text) });
                false
            }
            AlertAction::Escalate { units, roles } => {
                if alert.status != AlertStatus::Active {
                    return Err(ActError::AlreadyAcknowledged);
                }
                let level = alert.escalation.as_ref().map_or(1, |e| e.level + 1);
                alert.escalation = Some(Escalation { level, at: now, units, roles });
                true
            }
        };
        alert.updated_at = now;
        let changed = alert.clone();
        if changed.status == AlertStatus::Resolved {
            self.open_alerts.remove(&rule_id);
            self.resolved.insert(rule_id, (now, changed.severity));
        }
        Ok((changed, notify))
    }

    /// Whether a new alert of `rule` at `severity` falls within the cooldown that began when
    /// its last alert was resolved (and is not more severe than that one).
    fn cooling_down(&self, rule: &str, cooldown_s: i64, severity: Severity, now: OffsetDateTime) -> bool {
        if cooldown_s <= 0 || self.open_alerts.contains_key(rule) {
            return false;
        }
        self.resolved.get(rule).is_some_and(|(at, resolved_severity)| {
            severity <= *resolved_severity && now - *at < Duration::seconds(cooldown_s)
        })
    }

    fn alert_patient(&self) -> AlertPatient {
        let location: &Location = &self.view.location;
        AlertPatient {
            id: self.id.clone(),
            mrn: self.key.as_ref().map(|k| k.mrn.clone()).unwrap_or_default(),
            name: self.demographics.name.clone(),
            unit: location.unit.clone(),
            room: location.room.clone(),
            bed: location.bed.clone(),
        }
    }
}

fn apply_observation(view: &mut PatientView, o: &Observation) {
    match (o.value, &o.text) {
        (Some(value), _) => {
            let series = view.series.entry(o.name.clone()).or_default();
            if o.status == ResultStatus::Deleted {
                series.retain(|s| s.at != o.observed_at);
            } else {
                insert_ordered(series, Sample { at: o.observed_at, value });
            }
        }
        (None, Some(text)) => {
            let series = view.coded.entry(o.name.clone()).or_default();
            if o.status == ResultStatus::Deleted {
                series.retain(|s| s.at != o.observed_at);
            } else {
                let pos = series.iter().rposition(|s| s.at <= o.observed_at).map_or(0, |p| p + 1);
                if pos > 0 && series.get(pos - 1).is_some_and(|s| s.at == o.observed_at) {
                    series.remove(pos - 1);
                    series.insert(pos - 1, CodedSample { at: o.observed_at, text: text.clone() });
                } else {
                    series.insert(pos, CodedSample { at: o.observed_at, text: text.clone() });
                }
                while series.len() > WINDOW_MAX_SAMPLES {
                    series.pop_front();
                }
            }
        }
        (None, None) => {}
    }
}

fn upsert_medication(view: &mut PatientView, medication: &Medication, at: OffsetDateTime) {
    match view.medications.iter_mut().find(|m| m.medication.order_id == medication.order_id) {
        Some(existing) => existing.medication = medication.clone(),
        None => view.medications.push(ActiveMedication { medication: medication.clone(), since: at }),
    }
}

/// Whole years between a `YYYYMMDD` birth date and `now`.
fn age_years(birth_date: &str, now: OffsetDateTime) -> Option<i64> {
    let year: i64 = birth_date.get(0..4)?.parse().ok()?;
    let month: u8 = birth_date.get(4..6)?.parse().ok()?;
    let day: u8 = birth_date.get(6..8)?.parse().ok()?;
    let had_birthday = (u8::from(now.month()), now.day()) >= (month, day);
    let age = i64::from(now.year()) - year - i64::from(!had_birthday);
    (0..=150).contains(&age).then_some(age)
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
    fn a_window_holds_exactly_the_samples_within_its_seconds() {
        let t0 = datetime!(2026-01-01 00:00 UTC);
        let mut view = PatientView { now: Some(t0 + Duration::minutes(60)), ..PatientView::default() };
        let series = view.series.entry("hr".into()).or_default();
        for m in 0..=60 {
            series.push_back(Sample { at: t0 + Duration::minutes(m), value: m as f64 });
        }
        let values = |secs: f64| view.window("hr", secs).map(|s| s.value).collect::<Vec<_>>();
        assert_eq!(values(600.0), (50..=60).map(f64::from).collect::<Vec<_>>(), "the boundary sample is in");
        assert_eq!(values(0.0), vec![60.0]);
        assert_eq!(values(1e18).len(), 61);
        assert!(view.window("rr", 600.0).next().is_none());
    }

    #[test]
    fn a_rule_cooling_down_after_a_resolve_raises_nothing_unless_its_severity_rises() {
        let t0 = datetime!(2026-01-01 00:00 UTC);
        let mut state = PatientState::new(PatientId("p-cool".into()));
        let outcome = |severity, cooldown_s| RuleOutcome {
            rule_id: "t.cool".into(),
            version: "v1".into(),
            cooldown_s,
            verdict: RuleVerdict::Fire { severity, score: None, summary: "s".into(), details: crate::model::Details::null() },
        };
        let minutes = |m| t0 + Duration::minutes(m);
        let raised = state.decide(vec![outcome(Severity::High, 600)], t0);
        assert_eq!(raised.len(), 1);
        // A clinician resolves it; the condition still holds and the rule fires again.
        let resolve = AlertAction::Resolve { by: "rrt-1".into(), reason: "reviewed".into() };
        state.act(&raised[0].0.id, resolve, minutes(1)).unwrap();
        assert!(state.decide(vec![outcome(Severity::High, 600)], minutes(2)).is_empty(), "same severity within 10 min");
        assert!(state.decide(vec![outcome(Severity::Medium, 600)], minutes(10)).is_empty(), "lower severity within 10 min");
        let again = state.decide(vec![outcome(Severity::High, 600)], minutes(11));
        assert_eq!(again.len(), 1, "the cooldown has run out");
        assert_ne!(again[0].0.id, raised[0].0.id, "a new alert episode");
        // Resolved by the rule this time: a rise in severity is never held back.
        let rule_resolve = RuleOutcome {
            verdict: RuleVerdict::Resolve { reason: "normal".into(), details: crate::model::Details::null() },
            ..outcome(Severity::High, 600)
        };
        assert_eq!(state.decide(vec![rule_resolve], minutes(12)).len(), 1);
        assert!(state.decide(vec![outcome(Severity::High, 600)], minutes(13)).is_empty());
        let critical = state.decide(vec![outcome(Severity::Critical, 600)], minutes(13));
        assert_eq!(critical.len(), 1);
        assert!(critical[0].1, "and it notifies");
        // Without a cooldown every re-fire after a resolve is a new alert at once.
        let mut plain = PatientState::new(PatientId("p-plain".into()));
        let first = plain.decide(vec![outcome(Severity::High, 0)], t0);
        plain.act(&first[0].0.id, AlertAction::Resolve { by: "rrt-1".into(), reason: "r".into() }, minutes(1)).unwrap();
        assert_eq!(plain.decide(vec![outcome(Severity::High, 0)], minutes(2)).len(), 1);
    }

    #[test]
    fn age_counts_whole_years_and_rejects_nonsense() {
        let now = datetime!(2026-06-15 12:00 UTC);
        assert_eq!(age_years("19600615", now), Some(66));
        assert_eq!(age_years("19600616", now), Some(65));
        assert_eq!(age_years("1960", now), None);
        assert_eq!(age_years("30000101", now), None);
    }

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
