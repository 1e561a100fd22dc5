//! A patient actor's state: identity, location, bounded windows of recent values and the
//! alerts currently open per rule.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use time::{Duration, OffsetDateTime};

use crate::model::{
    Actioned, Alert, AlertAction, AlertId, AlertPatient, AlertStatus, CensusAction, ClinicalEvent, Comment,
    Demographics, Escalation, EventKind, LatestValue, Location, Medication, Observation, OrderAction, PatientId,
    PatientKey, PatientSummary, Phi, Resolution, ResultStatus, RuleRef, Severity, TrendPoint,
};
use crate::ports::{
    ActiveMedication, AlertPolicy, CodedSample, MAX_MEDICATIONS, MEDICATION_MEMORY, OpenAlertRef, PatientView,
    RuleOutcome, RuleVerdict, Sample, Series,
};

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
    /// Open (not resolved) alerts by (rule id, finding).
    pub open_alerts: HashMap<AlertKey, Alert>,
    /// The last closed alert per (rule, finding) of the past day: the start of its cooldown,
    /// the episode to reopen, what a clinician saw. Kept in memory: a restarted actor starts
    /// with none (so nothing is held back after a restart).
    resolved: HashMap<AlertKey, Closed>,
    /// Since when each open alert's rule has said "resolve" on complete data (hysteresis).
    clearing: HashMap<AlertKey, OffsetDateTime>,
    /// The newest `received_at` of the events folded in (what a snapshot of this state holds).
    through: Option<OffsetDateTime>,
}

/// An alert's key in a patient: rule id and finding (empty for a rule's one alert).
pub type AlertKey = (String, String);

/// Closed alerts remembered per patient, at most.
pub const MAX_CLOSED: usize = 512;

/// An alert as it was closed.
#[derive(Debug, Clone)]
struct Closed {
    at: OffsetDateTime,
    /// Until when remembering it changes what a re-fire does (cooldown, reopen window, or the
    /// day a "hold until changed" lasts).
    matters_until: OffsetDateTime,
    severity: Severity,
    by_clinician: bool,
    alert: Alert,
}

/// What a rule said when it fired.
struct Fired {
    rule: RuleRef,
    finding: Option<String>,
    severity: Severity,
    score: Option<f64>,
    summary: String,
    details: crate::model::Details,
    partial: bool,
}

impl Fired {
    fn write_into(self, alert: &mut Alert) {
        alert.rule = self.rule;
        alert.finding = self.finding;
        alert.severity = self.severity;
        alert.score = self.score;
        alert.summary = self.summary;
        alert.details = self.details;
        alert.stale = self.partial;
    }
}

/// FNV-1a, 64 bits: a stable digest of a finding's name for alert ids.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
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
            clearing: HashMap::new(),
            through: None,
        }
    }

    /// The newest `received_at` of the events folded in, `None` before the first.
    pub fn through(&self) -> Option<OffsetDateTime> {
        self.through
    }

    /// Restored from a snapshot holding the events received up to `at`.
    pub(super) fn restored_through(&mut self, at: OffsetDateTime) {
        self.through = Some(at);
    }

    /// Fold an event into the state.
    pub fn apply(&mut self, event: &ClinicalEvent) {
        self.through = Some(self.through.map_or(event.received_at, |t| t.max(event.received_at)));
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
            EventKind::MedicationOrder { action, medication } => {
                match action {
                    OrderAction::New | OrderAction::Change => upsert_medication(view, medication, event.received_at),
                    OrderAction::Discontinue | OrderAction::Cancel => {
                        stop_medication(view, medication, *action, event.received_at);
                    }
                }
                forget_old_medications(view, event.received_at);
            }
            EventKind::Administration { medication, given_at } => {
                record_administration(view, medication, *given_at);
                forget_old_medications(view, event.received_at.max(*given_at));
            }
            EventKind::Allergies { allergies, replace } => {
                // What this event adds to the record (or changes the severity of) is checked
                // against the active medications (`med.allergy`); a list sent again is not.
                let previous = std::mem::take(&mut view.allergies);
                view.new_allergies.clear();
                if !*replace {
                    view.allergies = previous.clone();
                }
                for allergy in allergies {
                    let same = |a: &&crate::model::Allergy| a.name == allergy.name && a.code == allergy.code;
                    let known = previous.iter().find(same);
                    if known.is_none_or(|a| a.severity != allergy.severity) {
                        view.new_allergies.push(allergy.clone());
                    }
                    match view.allergies.iter_mut().find(|a| a.name == allergy.name && a.code == allergy.code) {
                        // The sender's latest word on type and severity stands.
                        Some(a) => a.clone_from(allergy),
                        None => view.allergies.push(allergy.clone()),
                    }
                }
            }
            // Turned into alert changes by the actor (`crate::device::alarm_outcome`).
            EventKind::DeviceAlarm { .. } | EventKind::DeviceSilence { .. } => {}
        }
    }

    /// Take back an alert that was open when this actor last stopped.
    pub fn restore_open(&mut self, alert: Alert) {
        let key = (alert.rule.id.clone(), alert.finding.clone().unwrap_or_default());
        self.open_alerts.insert(key, alert);
    }

    /// The open alerts of `rule`, any finding.
    pub fn open_of<'a>(&'a self, rule: &'a str) -> impl Iterator<Item = &'a Alert> + 'a {
        self.open_alerts.iter().filter(move |((r, _), _)| r == rule).map(|(_, a)| a)
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
            medications: view
                .medications
                .iter()
                .filter(|m| m.stopped.is_none())
                .map(|m| m.medication.clone())
                .collect(),
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
        view.new_allergies.clear();
        Arc::clone(&self.view)
    }

    /// Prepare the view for evaluating `event` at `now`.
    pub fn view_at(&mut self, now: OffsetDateTime, event: &ClinicalEvent) -> Arc<PatientView> {
        let age = age_years(self.demographics.birth_date.expose(), now);
        let mut open: Vec<OpenAlertRef> = self
            .open_alerts
            .iter()
            .map(|((rule, finding), a)| OpenAlertRef {
                rule: rule.clone(),
                finding: finding.clone(),
                severity: a.severity,
            })
            .collect();
        open.sort_by(|a, b| (&a.rule, &a.finding).cmp(&(&b.rule, &b.finding)));
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
        if !matches!(event.kind, EventKind::Allergies { .. }) {
            view.new_allergies.clear();
        }
        Arc::clone(&self.view)
    }

    /// Turn rule outcomes into alert changes. Alerts are keyed by (rule, finding): a rule
    /// naming several findings (interacting pairs, analytes) has one alert for each; the
    /// scores have one per rule. For each key:
    ///
    /// - A re-fire of an open alert updates it quietly unless its severity rises, which
    ///   re-notifies and asks for a new acknowledgement. A fire on incomplete data (`partial`)
    ///   never lowers the severity: the alert keeps what it said and is marked stale.
    /// - A resolve on complete data starts the rule's clear time (`clear_for_s`); the alert is
    ///   closed at the first evaluation once the rule has said "resolve" for that long (any
    ///   fire in between starts over). A resolve on incomplete data never closes anything: the
    ///   alert is marked stale.
    /// - A fire soon after the rule closed the alert (`reopen_s`) reopens that alert, keeping
    ///   its acknowledgement unless severity rose. A fire after a clinician closed it is held
    ///   back within the rule's cooldown (and, for rules that ask, for as long as it says
    ///   exactly what the clinician saw), unless severity rises.
    ///
    /// Each change comes with whether consoles should notify.
    pub fn decide(&mut self, outcomes: Vec<RuleOutcome>, now: OffsetDateTime) -> Vec<(Alert, bool)> {
        self.forget_closed(now);
        let mut changes = Vec::new();
        for outcome in outcomes {
            let RuleOutcome { rule_id, version, policy, verdict } = outcome;
            match verdict {
                RuleVerdict::Fire { finding, severity, score, summary, details, partial } => {
                    let key = (rule_id.clone(), finding.clone().unwrap_or_default());
                    self.clearing.remove(&key);
                    let fired = Fired {
                        rule: RuleRef { id: rule_id, version },
                        finding,
                        severity,
                        score,
                        summary,
                        details,
                        partial,
                    };
                    changes.extend(self.fire(key, fired, policy, now));
                }
                RuleVerdict::Resolve { finding, reason, partial, .. } => {
                    let mut keys: Vec<AlertKey> = match finding {
                        Some(finding) => vec![(rule_id, finding)],
                        None => self.open_alerts.keys().filter(|(rule, _)| *rule == rule_id).cloned().collect(),
                    };
                    keys.sort();
                    for key in keys {
                        changes.extend(self.rule_resolve(key, &reason, partial, policy, now));
                    }
                }
                RuleVerdict::NotApplicable { .. } | RuleVerdict::Quiet => {}
            }
        }
        changes
    }

    fn fire(&mut self, key: AlertKey, fired: Fired, policy: AlertPolicy, now: OffsetDateTime) -> Option<(Alert, bool)> {
        if let Some(open) = self.open_alerts.get(&key) {
            // Incomplete data is no all-clear: the alert keeps its severity, shows what the rule
            // computed, and says its data is stale.
            let severity = if fired.partial { fired.severity.max(open.severity) } else { fired.severity };
            if open.severity == severity
                && open.score == fired.score
                && open.summary == fired.summary
                && open.details == fired.details
                && open.stale == fired.partial
            {
                return None;
            }
            let rose = severity > open.severity;
            let changed = severity != open.severity;
            let patient = self.alert_patient();
            let alert = self.open_alerts.get_mut(&key)?;
            fired.write_into(alert);
            if changed {
                alert.severity_since = now;
            }
            alert.severity = severity;
            alert.patient = patient;
            alert.updated_at = now;
            if rose {
                alert.status = AlertStatus::Active;
                alert.acknowledged = None;
            }
            return Some((alert.clone(), rose));
        }
        if let Some(closed) = self.resolved.get(&key) {
            let rose = fired.severity > closed.severity;
            let since = now - closed.at;
            if !closed.by_clinician && since < Duration::seconds(policy.reopen_s) {
                // The same episode coming back: reopen it rather than raise a new alert.
                let mut alert = closed.alert.clone();
                let acknowledged = alert.acknowledged.is_some() && !rose;
                if alert.severity != fired.severity {
                    alert.severity_since = now;
                }
                fired.write_into(&mut alert);
                alert.patient = self.alert_patient();
                alert.resolved = None;
                alert.reopened = alert.reopened.saturating_add(1);
                alert.updated_at = now;
                if acknowledged {
                    alert.status = AlertStatus::Acknowledged;
                } else {
                    alert.status = AlertStatus::Active;
                    alert.acknowledged = None;
                }
                self.resolved.remove(&key);
                self.open_alerts.insert(key, alert.clone());
                return Some((alert, !acknowledged));
            }
            let cooling = since < Duration::seconds(policy.cooldown_s);
            let as_seen = policy.hold_until_changed
                && closed.by_clinician
                && closed.alert.summary == fired.summary
                && closed.alert.details == fired.details;
            if !rose && (cooling || as_seen) {
                return None;
            }
        }
        let mut id = format!("{}-{}-{}", self.id, fired.rule.id, now.unix_timestamp_nanos() / 1_000_000);
        if let Some(finding) = &fired.finding {
            // Findings are named by the rule (drug or analyte names): the id carries a digest.
            id.push_str(&format!("-{:016x}", fnv1a(finding.as_bytes())));
        }
        let mut alert = Alert {
            id: AlertId(id),
            patient: self.alert_patient(),
            rule: fired.rule.clone(),
            finding: None,
            severity: fired.severity,
            severity_since: now,
            status: AlertStatus::Active,
            score: None,
            summary: String::new(),
            details: crate::model::Details::null(),
            raised_at: now,
            updated_at: now,
            acknowledged: None,
            resolved: None,
            escalation: None,
            comments: Vec::new(),
            stale: false,
            reopened: 0,
        };
        fired.write_into(&mut alert);
        self.resolved.remove(&key);
        self.open_alerts.insert(key, alert.clone());
        Some((alert, true))
    }

    fn rule_resolve(
        &mut self,
        key: AlertKey,
        reason: &str,
        partial: bool,
        policy: AlertPolicy,
        now: OffsetDateTime,
    ) -> Option<(Alert, bool)> {
        let Some(open) = self.open_alerts.get_mut(&key) else {
            self.clearing.remove(&key);
            return None;
        };
        if partial {
            // Missing or aged-out data never clears an alert, and restarts the clear time.
            self.clearing.remove(&key);
            if open.stale {
                return None;
            }
            open.stale = true;
            open.updated_at = now;
            return Some((open.clone(), false));
        }
        let since = *self.clearing.entry(key.clone()).or_insert(now);
        if now - since < Duration::seconds(policy.clear_for_s) {
            if !open.stale {
                return None;
            }
            // Complete data again: no longer stale, still clearing.
            open.stale = false;
            open.updated_at = now;
            return Some((open.clone(), false));
        }
        self.clearing.remove(&key);
        let mut alert = self.open_alerts.remove(&key)?;
        alert.status = AlertStatus::Resolved;
        alert.stale = false;
        alert.updated_at = now;
        alert.resolved = Some(Resolution { by: format!("rule:{}", key.0), at: now, reason: reason.to_string() });
        let matters_until = now + Duration::seconds(policy.reopen_s.max(policy.cooldown_s));
        self.resolved.insert(
            key,
            Closed { at: now, matters_until, severity: alert.severity, by_clinician: false, alert: alert.clone() },
        );
        Some((alert, false))
    }

    /// Apply a clinician's or the escalation timer's action to an open alert.
    pub fn act(
        &mut self,
        alert_id: &AlertId,
        action: AlertAction,
        now: OffsetDateTime,
    ) -> Result<(Alert, bool), ActError> {
        let key = self
            .open_alerts
            .iter()
            .find(|(_, a)| &a.id == alert_id)
            .map(|(key, _)| key.clone())
            .ok_or(ActError::NotOpen)?;
        let Some(alert) = self.open_alerts.get_mut(&key) else { return Err(ActError::NotOpen) };
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
            self.open_alerts.remove(&key);
            self.clearing.remove(&key);
            // The rule's cooldown is not known here: remember it for as long as any could last.
            let closed = Closed {
                at: now,
                matters_until: now + WINDOW_MAX_AGE,
                severity: changed.severity,
                by_clinician: true,
                alert: changed.clone(),
            };
            self.resolved.insert(key, closed);
        }
        Ok((changed, notify))
    }

    /// Whether stopping this actor now would change what it decides later: an alert is open
    /// (or clearing), or a closed alert's cooldown or reopen window is still running.
    pub fn has_running_clock(&self, now: OffsetDateTime) -> bool {
        !self.open_alerts.is_empty()
            || !self.clearing.is_empty()
            || self.resolved.values().any(|c| c.matters_until > now)
    }

    /// Whether this actor can stop and be rebuilt later from the store without losing
    /// anything: no clock running, and nothing learnt from events the rebuild may no longer
    /// read (it reads the last 24 h: medications and allergies can be older).
    pub fn can_passivate(&self, now: OffsetDateTime) -> bool {
        !self.has_running_clock(now) && self.view.medications.is_empty() && self.view.allergies.is_empty()
    }

    /// Closed alerts are remembered for a day (cooldowns, reopening, what a clinician saw),
    /// and at most [`MAX_CLOSED`] of them.
    fn forget_closed(&mut self, now: OffsetDateTime) {
        self.resolved.retain(|_, closed| now - closed.at <= WINDOW_MAX_AGE);
        while self.resolved.len() > MAX_CLOSED {
            let Some(oldest) = self.resolved.iter().min_by_key(|(_, c)| c.at).map(|(k, _)| k.clone()) else { break };
            self.resolved.remove(&oldest);
        }
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
                    if let Some(room) = growth(series.len(), series.capacity()) {
                        series.reserve_exact(room);
                    }
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

/// A new or changed order: running (again) from `at`, or the same order with its drug updated.
fn upsert_medication(view: &mut PatientView, medication: &Medication, at: OffsetDateTime) {
    match view.medications.iter_mut().find(|m| m.medication.order_id == medication.order_id) {
        Some(existing) => {
            existing.medication = medication.clone();
            if existing.stopped.is_some() || existing.administered_only {
                existing.since = at;
            }
            existing.administered_only = false;
            existing.stopped = None;
        }
        None => view.medications.push(ActiveMedication::ordered(medication.clone(), at)),
    }
}

/// A discontinued order is kept with its stop time (its washout is the tables' business); a
/// cancelled order that was never given is forgotten (it never reached the patient).
fn stop_medication(view: &mut PatientView, medication: &Medication, action: OrderAction, at: OffsetDateTime) {
    let Some(pos) = view.medications.iter().position(|m| m.medication.order_id == medication.order_id) else { return };
    let Some(m) = view.medications.get_mut(pos) else { return };
    if action == OrderAction::Cancel && m.last_given.is_none() && !m.administered_only {
        view.medications.remove(pos);
    } else if m.stopped.is_none() {
        m.stopped = Some(at);
    }
}

/// A dose given: of a known order (its latest dose), or a one-off with no order.
fn record_administration(view: &mut PatientView, medication: &Medication, given_at: OffsetDateTime) {
    match view.medications.iter_mut().find(|m| m.medication.order_id == medication.order_id) {
        Some(existing) => {
            existing.last_given = Some(existing.last_given.map_or(given_at, |g| g.max(given_at)));
            if existing.administered_only {
                existing.medication = medication.clone();
                existing.stopped = None;
            }
        }
        None => view.medications.push(ActiveMedication::administered(medication.clone(), given_at)),
    }
}

/// Drop what stopped (or was last given) longer than [`MEDICATION_MEMORY`] before `now`, and
/// keep the list bounded: past [`MAX_MEDICATIONS`] the oldest stopped or one-off entries go
/// first, then the oldest orders.
fn forget_old_medications(view: &mut PatientView, now: OffsetDateTime) {
    let ended = |m: &ActiveMedication| m.stopped.or(if m.administered_only { m.last_given } else { None });
    view.medications.retain(|m| ended(m).is_none_or(|at| now - at <= MEDICATION_MEMORY));
    while view.medications.len() > MAX_MEDICATIONS {
        let oldest_ended =
            view.medications.iter().enumerate().filter_map(|(i, m)| ended(m).map(|at| (at, i))).min().map(|(_, i)| i);
        let oldest =
            oldest_ended.or_else(|| view.medications.iter().enumerate().min_by_key(|(_, m)| m.since).map(|(i, _)| i));
        match oldest {
            Some(i) => {
                view.medications.remove(i);
            }
            None => break,
        }
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

/// The room to add before one more sample fits, growing by an eighth (at least
/// [`WINDOW_MIN_GROWTH`], never past [`WINDOW_MAX_SAMPLES`] + 1) instead of doubling: a day of
/// minute samples (1,440) held 2,048 slots when the window doubled, 30 % of it empty in every
/// series of every patient. Each sample is copied about eight times over a series' growth
/// (8 bytes each in a [`Series`], once per growth step), which the rules' microseconds dwarf.
/// `None` while there is room.
fn growth(len: usize, capacity: usize) -> Option<usize> {
    if len < capacity {
        return None;
    }
    let room = (len / 8).max(WINDOW_MIN_GROWTH);
    Some(room.min((WINDOW_MAX_SAMPLES + 1).saturating_sub(len)).max(1))
}

/// The fewest slots a window grows by (the first allocation of a series).
const WINDOW_MIN_GROWTH: usize = 4;

/// Insert keeping time order (monitors resend and interfaces reorder), then trim the window.
/// Times are compared as instants in nanoseconds ([`crate::ports::Reading::unix_nanos`]):
/// the same comparisons as on `OffsetDateTime`s, without building each sample's date.
fn insert_ordered(series: &mut Series, sample: Sample) {
    let at = sample.at.unix_timestamp_nanos();
    let max_age = WINDOW_MAX_AGE.whole_nanoseconds();
    // What the window drops once the sample is in, it drops first (the same samples: the
    // oldest, more than `WINDOW_MAX_AGE` before a sample that will be in the window), so a
    // series that must rebase for the sample re-encodes only what stays.
    while series.oldest().is_some_and(|f| at - f.unix_nanos() > max_age) {
        series.drop_oldest();
    }
    let pos = series.count_at_or_before(sample.at);
    if pos > 0 && series.readings(pos - 1..).next().is_some_and(|s| s.unix_nanos() == at) {
        // The same measurement sent again replaces the old one instead of doubling it.
        series.replace(pos - 1, sample);
    } else {
        if let Some(room) = growth(series.len(), series.capacity()) {
            series.reserve_exact(room);
        }
        series.insert(pos, sample);
    }
    let newest = series.newest().map(|s| s.unix_nanos());
    while series.len() > WINDOW_MAX_SAMPLES
        || newest.zip(series.oldest()).is_some_and(|(n, f)| n - f.unix_nanos() > max_age)
    {
        series.drop_oldest();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
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
            policy: AlertPolicy { cooldown_s, ..AlertPolicy::default() },
            verdict: RuleVerdict::Fire {
                finding: None,
                severity,
                score: None,
                summary: "s".into(),
                details: crate::model::Details::null(),
                partial: false,
            },
        };
        let minutes = |m| t0 + Duration::minutes(m);
        let raised = state.decide(vec![outcome(Severity::High, 600)], t0);
        assert_eq!(raised.len(), 1);
        // A clinician resolves it; the condition still holds and the rule fires again.
        let resolve = AlertAction::Resolve { by: "rrt-1".into(), reason: "reviewed".into() };
        state.act(&raised[0].0.id, resolve, minutes(1)).unwrap();
        assert!(state.decide(vec![outcome(Severity::High, 600)], minutes(2)).is_empty(), "same severity within 10 min");
        assert!(
            state.decide(vec![outcome(Severity::Medium, 600)], minutes(10)).is_empty(),
            "lower severity within 10 min"
        );
        let again = state.decide(vec![outcome(Severity::High, 600)], minutes(11));
        assert_eq!(again.len(), 1, "the cooldown has run out");
        assert_ne!(again[0].0.id, raised[0].0.id, "a new alert episode");
        // Resolved by the rule this time: a rise in severity is never held back.
        let rule_resolve = RuleOutcome {
            verdict: RuleVerdict::Resolve {
                finding: None,
                reason: "normal".into(),
                details: crate::model::Details::null(),
                partial: false,
            },
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

    fn fire(severity: Severity, summary: &str, partial: bool, policy: AlertPolicy) -> RuleOutcome {
        RuleOutcome {
            rule_id: "t.score".into(),
            version: "v1".into(),
            policy,
            verdict: RuleVerdict::Fire {
                finding: None,
                severity,
                score: None,
                summary: summary.into(),
                details: crate::model::Details::null(),
                partial,
            },
        }
    }

    fn clear(partial: bool, policy: AlertPolicy) -> RuleOutcome {
        RuleOutcome {
            verdict: RuleVerdict::Resolve {
                finding: None,
                reason: "below threshold".into(),
                details: crate::model::Details::null(),
                partial,
            },
            ..fire(Severity::High, "", false, policy)
        }
    }

    const HYSTERESIS: AlertPolicy =
        AlertPolicy { cooldown_s: 0, clear_for_s: 300, reopen_s: 900, hold_until_changed: false };

    #[test]
    fn an_alert_resolves_only_after_its_rule_has_said_clear_for_the_clear_time() {
        let t0 = datetime!(2026-01-01 00:00 UTC);
        let at = |s: i64| t0 + Duration::seconds(s);
        let mut state = PatientState::new(PatientId("p-hyst".into()));
        let raised = state.decide(vec![fire(Severity::High, "a", false, HYSTERESIS)], at(0));
        assert_eq!(raised.len(), 1);
        assert!(state.decide(vec![clear(false, HYSTERESIS)], at(10)).is_empty(), "clearing starts");
        assert!(state.decide(vec![clear(false, HYSTERESIS)], at(200)).is_empty(), "still clearing");
        // The value crosses back: the clear time starts over.
        assert!(state.decide(vec![fire(Severity::High, "a", false, HYSTERESIS)], at(250)).is_empty());
        assert!(state.decide(vec![clear(false, HYSTERESIS)], at(300)).is_empty());
        assert!(state.decide(vec![clear(false, HYSTERESIS)], at(599)).is_empty(), "299 s clear is not enough");
        let resolved = state.decide(vec![clear(false, HYSTERESIS)], at(600));
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0].0.status, AlertStatus::Resolved);
        assert!(!resolved[0].1, "a resolve does not beep");
    }

    #[test]
    fn a_re_fire_soon_after_the_rule_resolved_reopens_the_same_alert_keeping_its_acknowledgement() {
        let t0 = datetime!(2026-01-01 00:00 UTC);
        let at = |s: i64| t0 + Duration::seconds(s);
        let mut state = PatientState::new(PatientId("p-reopen".into()));
        let first = state.decide(vec![fire(Severity::High, "a", false, HYSTERESIS)], at(0))[0].0.clone();
        state.act(&first.id, AlertAction::Acknowledge { by: "rrt-1".into() }, at(30)).unwrap();
        state.decide(vec![clear(false, HYSTERESIS)], at(60));
        assert_eq!(state.decide(vec![clear(false, HYSTERESIS)], at(360))[0].0.status, AlertStatus::Resolved);
        // Back within the reopen window at the same severity: same alert, still acknowledged, quiet.
        let back = state.decide(vec![fire(Severity::High, "b", false, HYSTERESIS)], at(400));
        assert_eq!(back.len(), 1);
        let (alert, notify) = &back[0];
        assert_eq!(alert.id, first.id, "the same episode");
        assert_eq!(alert.status, AlertStatus::Acknowledged);
        assert_eq!(alert.reopened, 1);
        assert_eq!(alert.raised_at, first.raised_at);
        assert!(alert.resolved.is_none());
        assert!(!notify);
        // Clears again, then comes back higher: same episode, but it asks for a new acknowledgement.
        state.decide(vec![clear(false, HYSTERESIS)], at(500));
        state.decide(vec![clear(false, HYSTERESIS)], at(800));
        let higher = state.decide(vec![fire(Severity::Critical, "c", false, HYSTERESIS)], at(900));
        assert_eq!(higher[0].0.id, first.id);
        assert_eq!(higher[0].0.status, AlertStatus::Active);
        assert!(higher[0].0.acknowledged.is_none());
        assert!(higher[0].1, "a rise notifies");
        // Past the reopen window a re-fire is a new alert.
        state.decide(vec![clear(false, HYSTERESIS)], at(1000));
        state.decide(vec![clear(false, HYSTERESIS)], at(1300));
        let later = state.decide(vec![fire(Severity::High, "d", false, HYSTERESIS)], at(1300 + 901));
        assert_ne!(later[0].0.id, first.id);
        assert!(later[0].1);
    }

    #[test]
    fn severity_since_is_set_at_raise_and_at_each_change_of_severity_never_at_a_re_raise_at_the_same() {
        let t0 = datetime!(2026-01-01 00:00 UTC);
        let at = |s: i64| t0 + Duration::seconds(s);
        let policy = AlertPolicy { clear_for_s: 0, ..HYSTERESIS };
        let mut state = PatientState::new(PatientId("p-since".into()));
        let raised = state.decide(vec![fire(Severity::Medium, "NEWS2 5", false, policy)], at(0));
        assert_eq!(raised[0].0.severity_since, at(0), "raised");
        // Same severity, new content: the alert changes, the time at this severity does not.
        let same = state.decide(vec![fire(Severity::Medium, "NEWS2 6", false, policy)], at(60));
        assert_eq!((same[0].0.severity_since, same[0].0.updated_at), (at(0), at(60)));
        let rose = state.decide(vec![fire(Severity::High, "NEWS2 7", false, policy)], at(120));
        assert_eq!(rose[0].0.severity_since, at(120), "rose");
        // A partial, lower score keeps the severity and so its time.
        let partial = state.decide(vec![fire(Severity::Medium, "NEWS2 3 (partial)", true, policy)], at(180));
        assert_eq!((partial[0].0.severity, partial[0].0.severity_since), (Severity::High, at(120)));
        let fell = state.decide(vec![fire(Severity::Medium, "NEWS2 5", false, policy)], at(240));
        assert_eq!(fell[0].0.severity_since, at(240), "fell");
        // Resolved by the rule, then back within the reopen window: at the same severity the
        // time is kept, at another it starts again.
        state.decide(vec![clear(false, policy)], at(300));
        let back = state.decide(vec![fire(Severity::Medium, "NEWS2 5", false, policy)], at(360));
        assert_eq!((back[0].0.reopened, back[0].0.severity_since), (1, at(240)));
        state.decide(vec![clear(false, policy)], at(420));
        let higher = state.decide(vec![fire(Severity::Critical, "NEWS2 9", false, policy)], at(480));
        assert_eq!((higher[0].0.reopened, higher[0].0.severity_since), (2, at(480)));
    }

    #[test]
    fn an_alert_stored_before_severity_since_existed_reads_it_as_raised_at() {
        let stored = serde_json::json!({
            "id": "p-1-news2-1", "patient": {"id": "p-1", "mrn": "M", "name": "N", "unit": "ICU", "bed": "1"},
            "rule": {"id": "news2", "version": "v"}, "severity": "high", "status": "active", "score": 7.0,
            "summary": "s", "details": null, "raised_at": "2026-01-01T07:00:00Z", "updated_at": "2026-01-01T07:05:00Z"
        });
        let alert: Alert = serde_json::from_value(stored.clone()).unwrap();
        assert_eq!(alert.severity_since, datetime!(2026-01-01 07:00 UTC));
        let mut newer = stored;
        newer["severity_since"] = "2026-01-01T07:03:00Z".into();
        let alert: Alert = serde_json::from_value(newer).unwrap();
        assert_eq!(alert.severity_since, datetime!(2026-01-01 07:03 UTC));
        let again: Alert = serde_json::from_str(&serde_json::to_string(&alert).unwrap()).unwrap();
        assert_eq!(again, alert, "round trip");
    }

    #[test]
    fn incomplete_data_never_resolves_or_lowers_an_alert_and_marks_it_stale() {
        let t0 = datetime!(2026-01-01 00:00 UTC);
        let at = |s: i64| t0 + Duration::seconds(s);
        let policy = AlertPolicy { clear_for_s: 0, ..HYSTERESIS };
        let mut state = PatientState::new(PatientId("p-stale".into()));
        state.decide(vec![fire(Severity::Critical, "NEWS2 8", false, policy)], at(0));
        // A partial resolve: nothing closes, the alert says its data is stale.
        let stale = state.decide(vec![clear(true, policy)], at(60));
        assert_eq!(stale.len(), 1);
        assert_eq!(stale[0].0.status, AlertStatus::Active);
        assert!(stale[0].0.stale);
        assert!(state.decide(vec![clear(true, policy)], at(120)).is_empty(), "said once");
        // A partial, lower score: severity kept, content shown, still stale.
        let lower = state.decide(vec![fire(Severity::Medium, "NEWS2 3 (partial)", true, policy)], at(180));
        assert_eq!(lower[0].0.severity, Severity::Critical);
        assert_eq!(lower[0].0.summary, "NEWS2 3 (partial)");
        assert!(lower[0].0.stale);
        assert!(!lower[0].1);
        // Complete data again: a lower score now lowers, and a complete resolve resolves.
        let complete = state.decide(vec![fire(Severity::Medium, "NEWS2 3", false, policy)], at(240));
        assert_eq!(complete[0].0.severity, Severity::Medium);
        assert!(!complete[0].0.stale);
        let resolved = state.decide(vec![clear(false, policy)], at(300));
        assert_eq!(resolved[0].0.status, AlertStatus::Resolved);
    }

    #[test]
    fn a_clinicians_resolve_holds_for_the_cooldown_unless_severity_rises() {
        let t0 = datetime!(2026-01-01 00:00 UTC);
        let at = |s: i64| t0 + Duration::seconds(s);
        let policy = AlertPolicy { cooldown_s: 1800, ..HYSTERESIS };
        let mut state = PatientState::new(PatientId("p-manual".into()));
        let first = state.decide(vec![fire(Severity::High, "a", false, policy)], at(0))[0].0.clone();
        let resolve = AlertAction::Resolve { by: "rrt-1".into(), reason: "reviewed, stable".into() };
        state.act(&first.id, resolve, at(60)).unwrap();
        // Not reopened (a clinician closed it) and held within the cooldown.
        assert!(state.decide(vec![fire(Severity::High, "b", false, policy)], at(62)).is_empty());
        assert!(state.decide(vec![fire(Severity::High, "c", false, policy)], at(1800)).is_empty());
        let rose = state.decide(vec![fire(Severity::Critical, "d", false, policy)], at(1801));
        assert_eq!(rose.len(), 1);
        assert_ne!(rose[0].0.id, first.id, "a new episode");
        assert!(rose[0].1);
    }

    #[test]
    fn findings_of_one_rule_are_separate_alerts() {
        let t0 = datetime!(2026-01-01 00:00 UTC);
        let finding = |f: &str| RuleOutcome {
            rule_id: "t.ddi".into(),
            version: "v1".into(),
            policy: AlertPolicy::default(),
            verdict: RuleVerdict::Fire {
                finding: Some(f.into()),
                severity: Severity::High,
                score: None,
                summary: f.into(),
                details: crate::model::Details::null(),
                partial: false,
            },
        };
        let mut state = PatientState::new(PatientId("p-find".into()));
        let both = state.decide(vec![finding("a+b"), finding("a+c")], t0);
        assert_eq!(both.len(), 2);
        assert_ne!(both[0].0.id, both[1].0.id, "distinct ids in the same millisecond");
        assert!(both.iter().all(|(_, notify)| *notify));
        let resolve_one = RuleOutcome {
            verdict: RuleVerdict::Resolve {
                finding: Some("a+b".into()),
                reason: "stopped".into(),
                details: crate::model::Details::null(),
                partial: false,
            },
            ..finding("a+b")
        };
        let closed = state.decide(vec![resolve_one], t0 + Duration::seconds(1));
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].0.finding.as_deref(), Some("a+b"));
        assert_eq!(state.open_of("t.ddi").count(), 1);
        assert!(state.open_alerts.contains_key(&("t.ddi".to_string(), "a+c".to_string())));
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
        let mut s = Series::new();
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

    fn med_event(at: OffsetDateTime, kind: EventKind) -> ClinicalEvent {
        ClinicalEvent {
            patient_id: PatientId("p-meds".into()),
            patient: crate::model::PatientKey { authority: "T".into(), mrn: Phi("SYNTH-1".into()) },
            demographics: Demographics::default(),
            location: None,
            received_at: at,
            kind,
        }
    }

    fn drug(order_id: &str, name: &str) -> Medication {
        Medication { order_id: order_id.into(), rxnorm: None, name: name.into() }
    }

    fn order(at: OffsetDateTime, action: OrderAction, medication: Medication) -> ClinicalEvent {
        med_event(at, EventKind::MedicationOrder { action, medication })
    }

    #[test]
    fn a_discontinued_order_is_kept_with_its_stop_time_and_a_cancel_before_any_dose_forgets_it() {
        let t0 = datetime!(2026-01-01 00:00 UTC);
        let mut state = PatientState::new(PatientId("p-meds".into()));
        state.apply(&order(t0, OrderAction::New, drug("O1", "phenelzine")));
        state.apply(&order(t0, OrderAction::New, drug("O2", "sertraline")));
        state.apply(&order(t0 + Duration::hours(1), OrderAction::Discontinue, drug("O1", "phenelzine")));
        state.apply(&order(t0 + Duration::hours(2), OrderAction::Cancel, drug("O2", "sertraline")));
        let meds = &state.view.medications;
        assert_eq!(meds.len(), 1, "the cancelled order was never given: gone");
        assert_eq!(meds[0].stopped, Some(t0 + Duration::hours(1)), "the discontinued one stays, for its washout");
        assert!(state.summary(t0).medications.is_empty(), "the patient view lists running medications only");
        // Ordered again: running from the new order.
        state.apply(&order(t0 + Duration::days(2), OrderAction::New, drug("O1", "phenelzine")));
        let m = &state.view.medications[0];
        assert_eq!((m.stopped, m.since), (None, t0 + Duration::days(2)));
        // A cancel after a dose was given is a stop, not a deletion.
        state.apply(&med_event(
            t0 + Duration::days(3),
            EventKind::Administration { medication: drug("O1", "phenelzine"), given_at: t0 + Duration::days(3) },
        ));
        state.apply(&order(t0 + Duration::days(4), OrderAction::Cancel, drug("O1", "phenelzine")));
        assert_eq!(state.view.medications[0].stopped, Some(t0 + Duration::days(4)));
    }

    #[test]
    fn a_dose_without_an_order_is_a_one_off_and_a_dose_on_an_order_updates_it() {
        let t0 = datetime!(2026-01-01 00:00 UTC);
        let mut state = PatientState::new(PatientId("p-meds".into()));
        let give = |state: &mut PatientState, m: Medication, at: OffsetDateTime| {
            state.apply(&med_event(at, EventKind::Administration { medication: m, given_at: at }));
        };
        give(&mut state, drug("RAS-1", "methylene blue"), t0);
        state.apply(&order(t0, OrderAction::New, drug("O1", "linezolid")));
        give(&mut state, drug("O1", "linezolid"), t0 + Duration::hours(3));
        give(&mut state, drug("RAS-1", "methylene blue"), t0 + Duration::hours(5));
        let meds = &state.view.medications;
        assert_eq!(meds.len(), 2);
        assert!(meds[0].administered_only && meds[0].last_given == Some(t0 + Duration::hours(5)), "{:?}", meds[0]);
        assert!(!meds[1].administered_only && meds[1].last_given == Some(t0 + Duration::hours(3)), "{:?}", meds[1]);
        // An order for the one-off's id makes it an order.
        state.apply(&order(t0 + Duration::hours(6), OrderAction::New, drug("RAS-1", "methylene blue")));
        assert!(!state.view.medications[0].administered_only);
    }

    #[test]
    fn stopped_medications_are_forgotten_after_the_memory_and_the_list_stays_bounded() {
        let t0 = datetime!(2026-01-01 00:00 UTC);
        let mut state = PatientState::new(PatientId("p-meds".into()));
        state.apply(&order(t0, OrderAction::New, drug("OLD", "phenelzine")));
        state.apply(&order(t0, OrderAction::Discontinue, drug("OLD", "phenelzine")));
        let later = t0 + MEDICATION_MEMORY + Duration::minutes(1);
        state.apply(&order(later, OrderAction::New, drug("NEW", "sertraline")));
        let ids: Vec<&str> = state.view.medications.iter().map(|m| m.medication.order_id.as_str()).collect();
        assert_eq!(ids, ["NEW"]);
        for i in 0..(MAX_MEDICATIONS + 20) {
            let at = later + Duration::seconds(i as i64);
            state.apply(&order(at, OrderAction::New, drug(&format!("O{i}"), "drug")));
            if i % 2 == 0 {
                state.apply(&order(at, OrderAction::Discontinue, drug(&format!("O{i}"), "drug")));
            }
        }
        let meds = &state.view.medications;
        assert_eq!(meds.len(), MAX_MEDICATIONS);
        assert!(meds.iter().any(|m| m.medication.order_id == "NEW"), "running orders outlast stopped ones");
        assert!(!meds.iter().any(|m| m.medication.order_id == "O0"), "the oldest stopped went first");
    }

    #[test]
    fn only_allergies_new_to_the_record_or_more_or_less_severe_are_new() {
        let t0 = datetime!(2026-01-01 00:00 UTC);
        let mut state = PatientState::new(PatientId("p-meds".into()));
        let allergy = |name: &str, severity: &str| crate::model::Allergy {
            code: None,
            name: name.into(),
            kind: "DA".into(),
            severity: severity.into(),
        };
        let record = |state: &mut PatientState, allergies: Vec<crate::model::Allergy>, replace: bool| {
            let event = med_event(t0, EventKind::Allergies { allergies, replace });
            state.apply(&event);
            state.view_at(t0, &event).new_allergies.iter().map(|a| a.name.clone()).collect::<Vec<_>>()
        };
        assert_eq!(record(&mut state, vec![allergy("penicillin", "MO")], false), ["penicillin"]);
        assert!(record(&mut state, vec![allergy("penicillin", "MO")], false).is_empty(), "sent again: nothing new");
        assert_eq!(
            record(&mut state, vec![allergy("penicillin", "SV"), allergy("sulfa", "MI")], false),
            ["penicillin", "sulfa"]
        );
        assert_eq!(state.view.allergies.len(), 2);
        assert_eq!(state.view.allergies[0].severity, "SV", "the latest severity stands");
        assert!(record(&mut state, vec![allergy("sulfa", "MI")], true).is_empty());
        assert_eq!(state.view.allergies.len(), 1, "a complete list replaces the record");
        let vitals = med_event(t0, EventKind::Observations { observations: Vec::new() });
        state.apply(&vitals);
        assert!(state.view_at(t0, &vitals).new_allergies.is_empty(), "other events carry no new allergies");
    }

    /// What a hashbrown map of `capacity` allocates for entries of `entry` bytes: its buckets
    /// (a power of two, 7/8 usable from 8 on) and one control byte each plus a group's.
    fn map_bytes(capacity: usize, entry: usize) -> usize {
        let buckets = match capacity {
            0 => return 0,
            c if c < 8 => (c + 1).next_power_of_two(),
            c => (c * 8 / 7).next_power_of_two(),
        };
        buckets * (entry + 1) + 16
    }

    /// The bytes one patient's state holds: its own size, its view's, and what the window and
    /// the identity allocate (capacities, what the allocator handed out; its per-allocation
    /// rounding not counted). Maps of alerts are empty here and counted by their size only.
    fn state_bytes(state: &PatientState) -> usize {
        let text = |s: &String| s.capacity();
        let view = &state.view;
        let series: usize = view.series.iter().map(|(name, s)| text(name) + s.allocated_bytes()).sum();
        let coded: usize = view
            .coded
            .iter()
            .map(|(name, s)| {
                text(name)
                    + s.capacity() * std::mem::size_of::<CodedSample>()
                    + s.iter().map(|c| text(&c.text)).sum::<usize>()
            })
            .sum();
        let entry = std::mem::size_of::<(String, Series)>();
        let identity = text(&state.id.0)
            + state.key.as_ref().map_or(0, |k| text(&k.authority) + text(k.mrn.expose()))
            + text(state.demographics.name.expose())
            + text(state.demographics.birth_date.expose())
            + text(&state.demographics.sex);
        let location = text(&view.location.unit) + text(&view.location.room) + text(&view.location.bed);
        std::mem::size_of::<PatientState>()
            + std::mem::size_of::<PatientView>()
            + map_bytes(view.series.capacity(), entry)
            + map_bytes(view.coded.capacity(), std::mem::size_of::<(String, VecDeque<CodedSample>)>())
            + series
            + coded
            + identity
            + location
            + text(&view.sex)
            + view.patient_id.as_ref().map_or(0, |p| text(&p.0))
    }

    fn vitals(at: OffsetDateTime, values: &[(&str, f64)]) -> ClinicalEvent {
        let observations = values
            .iter()
            .map(|(name, value)| Observation {
                name: (*name).into(),
                value: Some(*value),
                text: None,
                unit: String::new(),
                observed_at: at,
                source_code: String::new(),
                device: None,
                status: ResultStatus::Final,
                result_key: String::new(),
                reference_range: None,
                abnormal_flags: Vec::new(),
            })
            .collect();
        ClinicalEvent {
            patient_id: PatientId("p-0001234".into()),
            patient: crate::model::PatientKey { authority: "SYNTH".into(), mrn: Phi("SYNTH-0001234".into()) },
            demographics: Demographics {
                name: Phi("Synthetic^Patient".into()),
                birth_date: Phi("19600101".into()),
                sex: "F".into(),
            },
            location: Some(Location { unit: "ICU".into(), room: "12".into(), bed: "A".into() }),
            received_at: at,
            kind: EventKind::Observations { observations },
        }
    }

    const SIX_VITALS: [(&str, f64); 6] =
        [("hr", 80.0), ("rr", 16.0), ("spo2", 97.0), ("sbp", 120.0), ("temp", 37.0), ("dbp", 70.0)];

    /// Issue 14: a monitored patient with 24 h of minute vitals (6 parameters, 8,640 samples)
    /// costs at most 100 KB. The samples themselves are 8,640 x 8 bytes in a [`Series`] (69 KB,
    /// the floor; 207 KB as 24-byte `Sample`s in a `VecDeque`, 230 KB with the window's room);
    /// a window that doubled held 2,048 slots for 1,440 samples in each series. Run with
    /// `--nocapture` for the figures (docs/BENCHMARKS.md, "memory per patient").
    #[test]
    fn a_day_of_minute_vitals_holds_at_most_an_eighth_of_its_window_empty() {
        let t0 = datetime!(2026-01-01 00:00 UTC);
        let mut state = PatientState::new(PatientId("p-0001234".into()));
        let one = vitals(t0, &SIX_VITALS);
        state.apply(&one);
        let after_one = state_bytes(&state);
        for minute in 1..(24 * 60) {
            state.apply(&vitals(t0 + Duration::minutes(minute), &SIX_VITALS));
        }
        let samples: usize = state.view.series.values().map(Series::len).sum();
        assert_eq!(samples, 8_640);
        assert_eq!(state.view.series.values().map(Series::spilled).sum::<usize>(), 0, "every sample is compact");
        let slots: usize = state.view.series.values().map(Series::capacity).sum();
        assert!(slots <= samples + samples / 8 + 6 * WINDOW_MIN_GROWTH, "{slots} slots for {samples} samples");
        let day = state_bytes(&state);
        let slot_bytes = state.view.series.values().map(Series::allocated_bytes).sum::<usize>() / slots;
        let floor = samples * slot_bytes;
        assert!(day < floor + floor / 8 + 4096, "{day} bytes for a {floor}-byte floor");
        assert!(day <= 100_000, "issue 14: {day} bytes for a day of minute vitals");
        // A day on, the window keeps 24 h: the same size, no growth.
        for minute in (24 * 60)..(48 * 60) {
            state.apply(&vitals(t0 + Duration::minutes(minute), &SIX_VITALS));
        }
        assert_eq!(state.view.series.values().map(Series::len).sum::<usize>(), 6 * (24 * 60 + 1));
        assert!(state_bytes(&state) <= day + 6 * (24 * 60 / 8 + WINDOW_MIN_GROWTH) * slot_bytes);
        eprintln!(
            "size_of: PatientState {} PatientView {} Sample {} Series {}; {slot_bytes} bytes a sample; one message \
             (6 vitals): {after_one} bytes; 24 h of minute vitals: {samples} samples in {slots} slots, {day} bytes \
             ({floor} of samples); 48 h on: {} bytes",
            std::mem::size_of::<PatientState>(),
            std::mem::size_of::<PatientView>(),
            std::mem::size_of::<Sample>(),
            std::mem::size_of::<Series>(),
            state_bytes(&state),
        );
    }

    /// The window as it was kept before [`Series`] (24-byte samples in a `VecDeque`): the
    /// reference the compact window must match sample for sample.
    fn reference_insert(series: &mut VecDeque<Sample>, sample: Sample) {
        let pos = series.iter().rposition(|s| s.at <= sample.at).map_or(0, |p| p + 1);
        if pos > 0 && series.get(pos - 1).is_some_and(|s| s.at == sample.at) {
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

    #[test]
    fn the_compact_window_keeps_what_the_sample_window_kept() {
        let t0 = datetime!(2026-03-29 00:00 +01:00);
        let (mut compact, mut reference) = (Series::new(), VecDeque::new());
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let mut clock = t0;
        for i in 0..6000 {
            // Mostly a minute on; sometimes back (a resend or a late message), a gap of days,
            // a sub-millisecond time, another offset, a value with no short decimal.
            let step = match next(40) {
                0 => -Duration::minutes(next(600) as i64),
                1 => Duration::days(next(3) as i64 + 1),
                2 => Duration::nanoseconds(next(1_000_000) as i64),
                _ => Duration::minutes(1),
            };
            clock += step;
            let at = match next(30) {
                0 => clock.to_offset(time::UtcOffset::UTC),
                1 => clock.to_offset(time::UtcOffset::from_hms(-4, 30, 0).unwrap()),
                _ => clock,
            };
            let value = match next(20) {
                0 => (f64::from(next(300) as u32) - 32.0) * 5.0 / 9.0,
                1 => -0.0,
                _ => f64::from(next(2000) as u32) / 10.0,
            };
            let sample = Sample { at, value };
            insert_ordered(&mut compact, sample);
            reference_insert(&mut reference, sample);
            assert_eq!(compact.len(), reference.len(), "insert {i}");
            let same = compact
                .iter()
                .zip(&reference)
                .all(|(a, b)| a.at == b.at && a.at.offset() == b.at.offset() && a.value.to_bits() == b.value.to_bits());
            assert!(same, "insert {i}: the windows differ");
            assert!(compact.spilled() <= 2 * compact.len() + 1);
        }
    }

    #[test]
    fn a_window_never_grows_past_its_bound() {
        let t0 = datetime!(2026-01-01 00:00 UTC);
        let mut s = Series::new();
        for i in 0..(3 * WINDOW_MAX_SAMPLES) {
            insert_ordered(&mut s, Sample { at: t0 + Duration::seconds(i as i64), value: 0.0 });
            assert!(s.capacity() <= WINDOW_MAX_SAMPLES + 1 + WINDOW_MIN_GROWTH, "capacity {}", s.capacity());
        }
        assert_eq!(s.len(), WINDOW_MAX_SAMPLES);
    }
}
