//! In-memory implementations of every port, for tests of the core and of adapters' callers.
//! They keep the ports' promises (sequence order, publish after "commit") without a disk.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use time::OffsetDateTime;

use crate::model::{
    AcceptedMessage, Alert, AlertId, AlertStatus, ClinicalEvent, FromMessage, MessageKey, PatientId, SequencedAlert,
};
use crate::ports::{
    AlertPublisher, AlertStore, Clock, Durable, EventStore, MessageLog, PatientView, RuleEngine, RuleOutcome,
    StoreError,
};

/// Events and alerts in memory.
#[derive(Default)]
pub struct MemoryStore {
    events: Mutex<Vec<ClinicalEvent>>,
    messages: Mutex<Vec<(MessageKey, AcceptedMessage)>>,
    alerts: Mutex<Vec<SequencedAlert>>,
    publisher: Mutex<Option<Arc<dyn AlertPublisher>>>,
    publish_order: Mutex<()>,
    snapshots: Mutex<std::collections::HashMap<PatientId, Vec<u8>>>,
    events_read: std::sync::atomic::AtomicUsize,
}

impl MemoryStore {
    /// A store that publishes committed alert changes to `publisher`.
    pub fn with_publisher(publisher: Arc<dyn AlertPublisher>) -> Self {
        MemoryStore { publisher: Mutex::new(Some(publisher)), ..MemoryStore::default() }
    }

    /// Every event appended so far.
    pub fn events(&self) -> Vec<ClinicalEvent> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// How many events `events_since` has returned so far (what rebuilds cost).
    pub fn events_read(&self) -> usize {
        self.events_read.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The snapshot held for `patient`, without taking it.
    pub fn snapshot_of(&self, patient: &PatientId) -> Option<Vec<u8>> {
        self.snapshots.lock().ok()?.get(patient).cloned()
    }
}

fn poisoned() -> StoreError {
    StoreError::Engine("memory store lock".into())
}

#[async_trait]
impl EventStore for MemoryStore {
    async fn append_all(
        &self,
        message: Option<&FromMessage>,
        events: &[ClinicalEvent],
        alerts: &[(Alert, bool)],
    ) -> Result<Durable, StoreError> {
        self.events.lock().map_err(|_| poisoned())?.extend(events.iter().cloned());
        if let (Some(FromMessage { envelope, logs_message, parts, .. }), Some(first)) = (message, events.first()) {
            let accepted = AcceptedMessage { patient_id: first.patient_id.clone(), received_at: envelope.received_at };
            let mut messages = self.messages.lock().map_err(|_| poisoned())?;
            if *logs_message {
                messages.push((envelope.key.clone(), accepted.clone()));
            }
            messages.extend(parts.iter().map(|part| (part.clone(), accepted.clone())));
        }
        for (alert, notify) in alerts {
            self.upsert_alert(alert, *notify).await?;
        }
        let (tx, rx) = Durable::channel();
        tx.complete(Ok(()));
        Ok(rx)
    }

    async fn events_since(&self, patient: &PatientId, since: OffsetDateTime) -> Result<Vec<ClinicalEvent>, StoreError> {
        let events = self.events.lock().map_err(|_| poisoned())?;
        let found: Vec<ClinicalEvent> =
            events.iter().filter(|e| &e.patient_id == patient && e.received_at >= since).cloned().collect();
        self.events_read.fetch_add(found.len(), std::sync::atomic::Ordering::Relaxed);
        Ok(found)
    }

    async fn save_snapshot(&self, patient: &PatientId, snapshot: &[u8]) -> Result<(), StoreError> {
        self.snapshots.lock().map_err(|_| poisoned())?.insert(patient.clone(), snapshot.to_vec());
        Ok(())
    }

    async fn take_snapshot(&self, patient: &PatientId) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.snapshots.lock().map_err(|_| poisoned())?.remove(patient))
    }

    async fn snapshotted_patients(&self, limit: usize) -> Result<Vec<PatientId>, StoreError> {
        Ok(self.snapshots.lock().map_err(|_| poisoned())?.keys().take(limit).cloned().collect())
    }
}

#[async_trait]
impl MessageLog for MemoryStore {
    async fn accepted_message(&self, key: &MessageKey) -> Result<Option<AcceptedMessage>, StoreError> {
        let messages = self.messages.lock().map_err(|_| poisoned())?;
        Ok(messages.iter().find(|(k, _)| k == key).map(|(_, accepted)| accepted.clone()))
    }
}

#[async_trait]
impl AlertStore for MemoryStore {
    async fn upsert_alert(&self, alert: &Alert, notify: bool) -> Result<Durable<u64>, StoreError> {
        // Numbering and publishing under one lock, so concurrent upserts publish in sequence
        // order (the port's promise); the alerts lock itself is released before publishing,
        // because a publisher may read the store.
        let _order = self.publish_order.lock().map_err(|_| poisoned())?;
        let change = {
            let mut alerts = self.alerts.lock().map_err(|_| poisoned())?;
            if let Some(same) = alerts.iter().rev().find(|c| c.alert.id == alert.id).filter(|c| &c.alert == alert) {
                let (tx, rx) = Durable::channel();
                tx.complete(Ok(same.seq));
                return Ok(rx);
            }
            let seq = alerts.len() as u64 + 1;
            let change = SequencedAlert { seq, notify, alert: alert.clone() };
            alerts.push(change.clone());
            change
        };
        let seq = change.seq;
        let publisher = self.publisher.lock().map_err(|_| poisoned())?.clone();
        if let Some(p) = publisher {
            p.publish(Arc::new(change));
        }
        let (tx, rx) = Durable::channel();
        tx.complete(Ok(seq));
        Ok(rx)
    }

    async fn alert(&self, id: &AlertId) -> Result<Option<SequencedAlert>, StoreError> {
        let alerts = self.alerts.lock().map_err(|_| poisoned())?;
        Ok(alerts.iter().rev().find(|a| &a.alert.id == id).cloned())
    }

    async fn alerts_after(&self, after: u64, limit: usize) -> Result<Vec<SequencedAlert>, StoreError> {
        let alerts = self.alerts.lock().map_err(|_| poisoned())?;
        Ok(alerts.iter().filter(|a| a.seq > after).take(limit).cloned().collect())
    }

    async fn open_alerts(&self) -> Result<Vec<SequencedAlert>, StoreError> {
        let alerts = self.alerts.lock().map_err(|_| poisoned())?;
        let mut latest: std::collections::BTreeMap<_, SequencedAlert> = Default::default();
        for a in alerts.iter() {
            latest.insert(a.alert.id.clone(), a.clone());
        }
        Ok(latest.into_values().filter(|a| a.alert.status != AlertStatus::Resolved).collect())
    }

    fn last_seq(&self) -> u64 {
        self.alerts.lock().map(|a| a.len() as u64).unwrap_or(0)
    }
}

/// Collects published alert changes.
#[derive(Default)]
pub struct CollectingPublisher {
    /// What was published, in order.
    pub published: Mutex<Vec<Arc<SequencedAlert>>>,
}

impl AlertPublisher for CollectingPublisher {
    fn publish(&self, change: Arc<SequencedAlert>) {
        if let Ok(mut p) = self.published.lock() {
            p.push(change);
        }
    }
}

/// A clock that stands still until moved.
pub struct ManualClock(pub Mutex<OffsetDateTime>);

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        self.0.lock().map(|t| *t).unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }
}

/// A rule engine backed by a closure.
pub struct FnRules<F>(pub F);

impl<F> RuleEngine for FnRules<F>
where
    F: Fn(&PatientView, &[&str]) -> Vec<RuleOutcome> + Send + Sync + 'static,
{
    fn evaluate(&self, view: &Arc<PatientView>, triggers: &[&str]) -> Vec<RuleOutcome> {
        (self.0)(view, triggers)
    }

    fn evaluate_all(&self, view: &Arc<PatientView>) -> Vec<RuleOutcome> {
        (self.0)(view, &[])
    }
}

/// A respiratory-rate reading of patient `p-{mrn}` in bed ICU 1-A at `at`: the event most
/// router and actor tests send.
pub fn rr_event(mrn: &str, rr: f64, at: OffsetDateTime) -> ClinicalEvent {
    use crate::model::{Demographics, EventKind, Location, Observation, PatientKey, Phi, ResultStatus};
    ClinicalEvent {
        patient_id: PatientId(format!("p-{mrn}")),
        patient: PatientKey { authority: "HOSP".into(), mrn: Phi(mrn.into()) },
        demographics: Demographics { name: Phi("Test, Patient".into()), ..Default::default() },
        location: Some(Location { unit: "ICU".into(), room: "1".into(), bed: "A".into() }),
        received_at: at,
        kind: EventKind::Observations {
            observations: vec![Observation {
                name: "rr".into(),
                value: Some(rr),
                text: None,
                unit: "/min".into(),
                observed_at: at,
                source_code: "MDC|151562".into(),
                device: None,
                status: ResultStatus::Final,
                result_key: String::new(),
                reference_range: None,
                abnormal_flags: vec![],
            }],
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;
    use crate::patient::ActFailure;
    use crate::ports::{AlertPolicy, RuleVerdict};
    use crate::router::Router;

    fn event(mrn: &str, rr: f64, at: OffsetDateTime) -> ClinicalEvent {
        rr_event(mrn, rr, at)
    }

    /// Rule `t.rr`: fires (high) while the latest RR is 30 /min or more, says nothing otherwise.
    fn raises_at_30(latest_rr: Option<f64>) -> Vec<RuleOutcome> {
        match latest_rr {
            Some(rr) if rr >= 30.0 => vec![RuleOutcome {
                rule_id: "t.rr".into(),
                version: "v1".into(),
                policy: AlertPolicy::default(),
                verdict: RuleVerdict::Fire {
                    finding: None,
                    severity: Severity::High,
                    score: Some(rr),
                    summary: "rr".into(),
                    details: crate::model::Details::null(),
                    partial: false,
                },
            }],
            _ => Vec::new(),
        }
    }

    #[tokio::test]
    async fn router_persists_evaluates_and_dedups_alerts_per_patient_and_rule() {
        let publisher = Arc::new(CollectingPublisher::default());
        let store = Arc::new(MemoryStore::with_publisher(publisher.clone()));
        let t0 = time::macros::datetime!(2026-01-01 00:00 UTC);
        let clock = Arc::new(ManualClock(Mutex::new(t0)));
        let rules = Arc::new(FnRules(|v: &PatientView, _t: &[&str]| {
            let verdict = match v.latest("rr", 600.0) {
                Some(rr) if rr >= 22.0 => RuleVerdict::Fire {
                    finding: None,
                    severity: if rr >= 30.0 { Severity::Critical } else { Severity::High },
                    score: Some(rr),
                    summary: "fast breathing".into(),
                    details: crate::model::Details::from_value(&serde_json::json!({})),
                    partial: false,
                },
                _ => RuleVerdict::Resolve {
                    finding: None,
                    reason: "normal".into(),
                    details: crate::model::Details::null(),
                    partial: false,
                },
            };
            vec![RuleOutcome { rule_id: "t.rr".into(), version: "v1".into(), policy: AlertPolicy::default(), verdict }]
        }));
        let router = Arc::new(Router::new(store.clone(), store.clone(), rules, clock).await.unwrap());
        for rr in [12.0, 24.0, 24.0, 31.0, 14.0] {
            router.ingest(event("100", rr, t0)).await.unwrap().wait().await.unwrap();
        }
        router.shutdown().await;
        let published = publisher.published.lock().unwrap().clone();
        let statuses: Vec<_> = published.iter().map(|c| (c.seq, c.alert.status, c.alert.severity)).collect();
        assert_eq!(
            statuses,
            vec![
                (1, AlertStatus::Active, Severity::High),
                (2, AlertStatus::Active, Severity::Critical),
                (3, AlertStatus::Resolved, Severity::Critical),
            ],
            "an unchanged re-fire is not re-published; a rise updates; a resolve closes"
        );
        assert!(published.iter().all(|c| c.alert.id == published[0].alert.id));
        assert_eq!(published.iter().map(|c| c.notify).collect::<Vec<_>>(), vec![true, true, false]);
        assert_eq!(store.events().len(), 5);
    }

    #[tokio::test]
    async fn a_second_different_interaction_after_the_first_is_acknowledged_is_a_new_notified_alert() {
        let publisher = Arc::new(CollectingPublisher::default());
        let store = Arc::new(MemoryStore::with_publisher(publisher.clone()));
        let t0 = time::macros::datetime!(2026-01-01 00:00 UTC);
        let clock = Arc::new(ManualClock(Mutex::new(t0)));
        // A DDI-like rule naming each interacting pair with the newly ordered drug.
        let rules = Arc::new(FnRules(|v: &PatientView, _t: &[&str]| {
            let Some(order) = &v.new_order else { return Vec::new() };
            v.medications
                .iter()
                .filter(|m| m.medication.order_id != order.order_id)
                .filter(|m| m.medication.name == "warfarin" || order.name == "warfarin")
                .map(|m| {
                    let mut pair = [order.name.clone(), m.medication.name.clone()];
                    pair.sort();
                    RuleOutcome {
                        rule_id: "t.ddi".into(),
                        version: "v1".into(),
                        policy: AlertPolicy::default(),
                        verdict: RuleVerdict::Fire {
                            finding: Some(pair.join("+")),
                            severity: Severity::High,
                            score: Some(1.0),
                            summary: format!("interaction {}", pair.join(" + ")),
                            details: crate::model::Details::null(),
                            partial: false,
                        },
                    }
                })
                .collect()
        }));
        let order = |name: &str, _n: u32| ClinicalEvent {
            kind: EventKind::MedicationOrder {
                action: OrderAction::New,
                medication: Medication { order_id: format!("ORD-{name}"), rxnorm: None, name: name.into() },
            },
            ..event("300", 12.0, t0)
        };
        let router = Arc::new(Router::new(store.clone(), store.clone(), rules, clock).await.unwrap());
        let patient = PatientId("p-300".into());
        router.ingest(order("warfarin", 1)).await.unwrap().wait().await.unwrap();
        router.ingest(order("ibuprofen", 2)).await.unwrap().wait().await.unwrap();
        let first = publisher.published.lock().unwrap()[0].alert.clone();
        assert_eq!(first.finding.as_deref(), Some("ibuprofen+warfarin"));
        let ack = AlertAction::Acknowledge { by: "nurse-1".into() };
        router.act(&patient, first.id.clone(), ack).await.unwrap().1.wait().await.unwrap();
        // A second, different interaction with warfarin.
        router.ingest(order("fluconazole", 3)).await.unwrap().wait().await.unwrap();
        router.shutdown().await;
        let published = publisher.published.lock().unwrap().clone();
        let last = published.last().unwrap();
        assert_eq!(last.alert.finding.as_deref(), Some("fluconazole+warfarin"));
        assert_ne!(last.alert.id, first.id, "a new alert, not an edit of the acknowledged one");
        assert_eq!(last.alert.status, AlertStatus::Active);
        assert!(last.notify, "consoles are told");
        let first_now = published.iter().rev().find(|c| c.alert.id == first.id).unwrap();
        assert_eq!(first_now.alert.status, AlertStatus::Acknowledged, "the first keeps its acknowledgement");
        assert_eq!(published.iter().filter(|c| c.notify).count(), 2, "one notification per finding");
    }

    #[tokio::test]
    async fn an_idle_patient_is_passivated_and_its_next_event_rebuilds_it_with_the_same_window() {
        let store = Arc::new(MemoryStore::with_publisher(Arc::new(CollectingPublisher::default())));
        let t0 = time::macros::datetime!(2026-01-01 00:00 UTC);
        let clock = Arc::new(ManualClock(Mutex::new(t0)));
        // Records the RR window each rule run sees, per patient; raises for RR >= 30 only.
        type Seen = Vec<(PatientId, Vec<f64>)>;
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let record = Arc::clone(&seen);
        let rules = Arc::new(FnRules(move |v: &PatientView, _t: &[&str]| {
            let window: Vec<f64> = v.window("rr", 86_400.0).map(|s| s.value).collect();
            record.lock().unwrap().push((v.patient_id.clone().unwrap(), window));
            raises_at_30(v.latest("rr", 600.0))
        }));
        let router = Arc::new(Router::new(store.clone(), store.clone(), rules, clock.clone()).await.unwrap());
        let at = |minutes: i64| t0 + time::Duration::minutes(minutes);
        // Three patients with two readings each; the third's RR raises an alert.
        for minute in [0, 10] {
            *clock.0.lock().unwrap() = at(minute);
            for (mrn, rr) in [("400", 18.0), ("401", 18.0), ("402", 31.0)] {
                router.ingest(event(mrn, rr + minute as f64 / 10.0, at(minute))).await.unwrap().wait().await.unwrap();
            }
        }
        assert_eq!(router.patient_count(), 3);
        *clock.0.lock().unwrap() = at(10) + time::Duration::minutes(59);
        assert_eq!(router.passivate_idle(time::Duration::hours(1)).await, 0, "not idle for an hour yet");
        *clock.0.lock().unwrap() = at(10) + time::Duration::minutes(61);
        assert_eq!(router.passivate_idle(time::Duration::hours(1)).await, 2, "idle, no open alert");
        assert_eq!(router.patient_count(), 1, "only the patient with an open alert keeps a live actor");

        // A patient on a medication ordered more than a day ago keeps its actor: a rebuild reads
        // the last 24 h and would lose the order (and with it every interaction check).
        let order = ClinicalEvent {
            kind: EventKind::MedicationOrder {
                action: OrderAction::New,
                medication: Medication { order_id: "ORD-1".into(), rxnorm: None, name: "phenelzine".into() },
            },
            ..event("403", 16.0, at(10) + time::Duration::minutes(61))
        };
        *clock.0.lock().unwrap() = at(10) + time::Duration::minutes(61);
        router.ingest(order).await.unwrap().wait().await.unwrap();
        *clock.0.lock().unwrap() = at(10) + time::Duration::hours(30);
        router.passivate_idle(time::Duration::hours(1)).await;
        assert_eq!(router.patient_count(), 2, "the patient on a medication and the one with an open alert");
        *clock.0.lock().unwrap() = at(71);

        // The next event rebuilds the passivated patient from the store: its rules see the
        // window a never-passivated patient with the same history sees.
        seen.lock().unwrap().clear();
        *clock.0.lock().unwrap() = at(72);
        router.ingest(event("400", 20.0, at(72))).await.unwrap().wait().await.unwrap();
        assert_eq!(router.patient_count(), 3);
        let window = seen.lock().unwrap().last().unwrap().clone();
        assert_eq!(window.0, PatientId("p-400".into()));
        assert_eq!(window.1, vec![18.0, 19.0, 20.0], "the history came back from the store");
        router.shutdown().await;
        assert_eq!(router.patient_count(), 0);
    }

    #[tokio::test]
    async fn a_rebuild_reads_the_snapshot_of_the_last_stop_and_tops_it_up_from_the_log() {
        let store = Arc::new(MemoryStore::with_publisher(Arc::new(CollectingPublisher::default())));
        let t0 = time::macros::datetime!(2026-01-01 00:00 UTC);
        let clock = Arc::new(ManualClock(Mutex::new(t0)));
        let seen: Arc<Mutex<Vec<Vec<f64>>>> = Arc::default();
        let record = Arc::clone(&seen);
        let rules = Arc::new(FnRules(move |v: &PatientView, _t: &[&str]| {
            record.lock().unwrap().push(v.window("rr", 86_400.0).map(|s| s.value).collect());
            Vec::new()
        }));
        let router = Arc::new(Router::new(store.clone(), store.clone(), rules, clock.clone()).await.unwrap());
        let at = |minutes: i64| t0 + time::Duration::minutes(minutes);
        let patient = PatientId("p-500".into());
        for (minute, rr) in [(0, 18.0), (10, 19.0), (20, 21.0)] {
            *clock.0.lock().unwrap() = at(minute);
            router.ingest(event("500", rr, at(minute))).await.unwrap().wait().await.unwrap();
        }
        assert!(store.snapshot_of(&patient).is_none(), "a live actor keeps its state in memory");
        *clock.0.lock().unwrap() = at(90);
        assert_eq!(router.passivate_idle(time::Duration::hours(1)).await, 1);
        assert!(store.snapshot_of(&patient).is_some(), "a clean stop leaves a snapshot");

        // An event logged after the snapshot was written (another writer, or a successor that
        // failed before it could write its own): the rebuild applies it on top.
        store.append(&event("500", 24.0, at(91))).await.unwrap().wait().await.unwrap();
        let read_before = store.events_read();
        *clock.0.lock().unwrap() = at(92);
        router.ingest(event("500", 22.0, at(92))).await.unwrap().wait().await.unwrap();
        assert_eq!(seen.lock().unwrap().last().unwrap(), &vec![18.0, 19.0, 21.0, 24.0, 22.0], "the whole window");
        assert_eq!(
            store.events_read() - read_before,
            2,
            "one record, then the newest event it holds (re-applied) and the one logged after it: not the day"
        );
        assert!(store.snapshot_of(&patient).is_none(), "taken by the start: a failed successor replays the log");

        // A snapshot this build cannot use (another version, another patient's, garbage) is
        // ignored: the actor is rebuilt from the log, never started with a partial window.
        router.shutdown().await;
        let good = store.snapshot_of(&patient).expect("shutdown leaves a snapshot");
        let mut other_version: serde_json::Value = serde_json::from_slice(&good).unwrap();
        other_version["version"] = serde_json::json!(crate::patient::SNAPSHOT_VERSION + 1);
        let unusable = [serde_json::to_vec(&other_version).unwrap(), b"garbage".to_vec()];
        for bytes in unusable {
            let rules_seen = Arc::clone(&seen);
            let rules = Arc::new(FnRules(move |v: &PatientView, _t: &[&str]| {
                rules_seen.lock().unwrap().push(v.window("rr", 86_400.0).map(|s| s.value).collect());
                Vec::new()
            }));
            let router = Arc::new(Router::new(store.clone(), store.clone(), rules, clock.clone()).await.unwrap());
            store.save_snapshot(&patient, &bytes).await.unwrap();
            let read_before = store.events_read();
            router.ingest(event("500", 23.0, at(93))).await.unwrap().wait().await.unwrap();
            assert_eq!(store.events_read() - read_before, 5, "the day replayed from the log: all five logged events");
            assert_eq!(seen.lock().unwrap().last().unwrap(), &vec![18.0, 19.0, 21.0, 24.0, 22.0, 23.0]);
            router.shutdown().await;
            store.take_snapshot(&patient).await.unwrap();
            // Drop the event of this round so the next starts from the same log.
            store.events.lock().unwrap().pop();
        }
    }

    /// The `through` a snapshot names, as (unix seconds, nanoseconds, offset seconds).
    fn snapshot_through(bytes: &[u8]) -> OffsetDateTime {
        let value: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        OffsetDateTime::from_unix_timestamp(value["through"][0].as_i64().unwrap()).unwrap()
    }

    /// Until the store holds a snapshot of `patient` naming `through` (written by a task beside
    /// the ACK: the test yields to it, it does not sleep).
    async fn snapshot_lands(store: &MemoryStore, patient: &PatientId, through: OffsetDateTime) {
        let landed = async {
            while store.snapshot_of(patient).is_none_or(|b| snapshot_through(&b) != through) {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), landed).await.expect("the snapshot is written");
    }

    #[tokio::test]
    async fn a_running_actor_snapshots_every_n_events_so_a_rebuild_after_a_crash_replays_fewer_than_n() {
        const EVERY: u32 = 10;
        let t0 = time::macros::datetime!(2026-01-01 00:00 UTC);
        let at = |minutes: i64| t0 + time::Duration::minutes(minutes);
        let patient = PatientId("p-600".into());
        // The same 26 events (25 one every 5 minutes, one late), with the cadence and without.
        for every in [EVERY, 0] {
            let store = Arc::new(MemoryStore::with_publisher(Arc::new(CollectingPublisher::default())));
            let clock = Arc::new(ManualClock(Mutex::new(t0)));
            let seen: Arc<Mutex<Vec<Vec<f64>>>> = Arc::default();
            let record = Arc::clone(&seen);
            let rules = Arc::new(FnRules(move |v: &PatientView, _t: &[&str]| {
                record.lock().unwrap().push(v.window("rr", 86_400.0).map(|s| s.value).collect());
                Vec::new()
            }));
            let router = Arc::new(
                Router::new(store.clone(), store.clone(), rules.clone(), clock.clone())
                    .await
                    .unwrap()
                    .with_snapshot_every(every),
            );
            let values: Vec<f64> = (0..25).map(|i| 10.0 + f64::from(i)).collect();
            for (i, rr) in values.iter().enumerate() {
                *clock.0.lock().unwrap() = at(5 * i as i64);
                router.ingest(event("600", *rr, at(5 * i as i64))).await.unwrap().wait().await.unwrap();
            }
            if every > 0 {
                // Written after the 10th and the 20th event, each naming its newest event less
                // the reorder margin.
                snapshot_lands(&store, &patient, at(5 * 19) - crate::patient::REORDER_MARGIN).await;
            } else {
                assert!(store.snapshot_of(&patient).is_none(), "no cadence: a live actor writes none");
            }
            // A message stamped before the 20th event but reaching the actor after it (another
            // connection, a wait for admission): after its snapshot, yet before its `through`.
            router.ingest(event("600", 50.0, at(94))).await.unwrap().wait().await.unwrap();
            // A crash: the actor never stops cleanly (no snapshot at stop); a new router over
            // the same store rebuilds the patient on its next event.
            let crashed = router;
            let router = Arc::new(
                Router::new(store.clone(), store.clone(), rules, clock.clone())
                    .await
                    .unwrap()
                    .with_snapshot_every(every),
            );
            let read_before = store.events_read();
            *clock.0.lock().unwrap() = at(125);
            router.ingest(event("600", 99.0, at(125))).await.unwrap().wait().await.unwrap();
            let replayed = store.events_read() - read_before;
            let mut window = values.clone();
            window.insert(19, 50.0);
            window.push(99.0);
            assert_eq!(seen.lock().unwrap().last().unwrap(), &window, "the whole window either way");
            if every > 0 {
                // Events 20..25 after the snapshot, and the two inside the margin before it
                // (the 20th, already in it, re-applied; the late one, not in it).
                assert_eq!(replayed, 7, "the snapshot of the 20th event, topped up");
                assert!(replayed < EVERY as usize);
            } else {
                assert_eq!(replayed, 26, "without the cadence the day is replayed");
            }
            drop(crashed);
        }
    }

    #[tokio::test]
    async fn acknowledge_holds_until_severity_rises_and_resolve_closes() {
        let publisher = Arc::new(CollectingPublisher::default());
        let store = Arc::new(MemoryStore::with_publisher(publisher.clone()));
        let t0 = time::macros::datetime!(2026-01-01 00:00 UTC);
        let clock = Arc::new(ManualClock(Mutex::new(t0)));
        let rules = Arc::new(FnRules(|v: &PatientView, _t: &[&str]| {
            let rr = v.latest("rr", 600.0).unwrap_or(0.0);
            let severity = if rr >= 30.0 { Severity::Critical } else { Severity::High };
            let verdict = RuleVerdict::Fire {
                finding: None,
                severity,
                score: Some(rr),
                summary: "rr".into(),
                details: crate::model::Details::from_value(&serde_json::json!({})),
                partial: false,
            };
            vec![RuleOutcome { rule_id: "t.rr".into(), version: "v1".into(), policy: AlertPolicy::default(), verdict }]
        }));
        let router = Arc::new(Router::new(store.clone(), store.clone(), rules, clock).await.unwrap());
        let patient = PatientId("p-200".into());
        router.ingest(event("200", 24.0, t0)).await.unwrap().wait().await.unwrap();
        let id = publisher.published.lock().unwrap()[0].alert.id.clone();

        let ack = AlertAction::Acknowledge { by: "nurse-1".into() };
        let (acked, ticket) = router.act(&patient, id.clone(), ack.clone()).await.unwrap();
        ticket.wait().await.unwrap();
        assert_eq!(acked.status, AlertStatus::Acknowledged);
        assert_eq!(acked.acknowledged.as_ref().map(|a| a.by.as_str()), Some("nurse-1"));
        assert!(matches!(router.act(&patient, id.clone(), ack).await, Err(ActFailure::Refused(_))));

        router.ingest(event("200", 25.0, t0)).await.unwrap().wait().await.unwrap();
        router.ingest(event("200", 32.0, t0)).await.unwrap().wait().await.unwrap();
        for i in 0..crate::patient::MAX_COMMENTS {
            let comment = AlertAction::Comment { by: "nurse-1".into(), text: format!("note {i}") };
            router.act(&patient, id.clone(), comment).await.unwrap();
        }
        let one_more = AlertAction::Comment { by: "nurse-1".into(), text: "too many".into() };
        assert!(
            matches!(
                router.act(&patient, id.clone(), one_more).await,
                Err(ActFailure::Refused(crate::patient::ActError::TooManyComments))
            ),
            "comments on one alert are bounded"
        );
        let resolve = AlertAction::Resolve { by: "nurse-1".into(), reason: "treated".into() };
        let (resolved, _) = router.act(&patient, id.clone(), resolve.clone()).await.unwrap();
        assert_eq!(resolved.status, AlertStatus::Resolved);
        assert!(matches!(router.act(&patient, id, resolve).await, Err(ActFailure::Refused(_))));
        router.shutdown().await;

        let changes: Vec<_> = publisher.published.lock().unwrap().iter().map(|c| (c.alert.status, c.notify)).collect();
        assert_eq!(
            changes,
            vec![
                (AlertStatus::Active, true),
                (AlertStatus::Acknowledged, false),
                (AlertStatus::Acknowledged, false), // a quiet update keeps the acknowledgement
                (AlertStatus::Active, true),        // a severity rise asks for a new one
            ]
            .into_iter()
            .chain(std::iter::repeat_n((AlertStatus::Active, false), crate::patient::MAX_COMMENTS)) // comments
            .chain([(AlertStatus::Resolved, false)])
            .collect::<Vec<_>>()
        );
    }

    /// A connection routes its next message while the actor of the last one is still at work:
    /// one slow patient does not hold up another's message, and a patient's own messages are
    /// applied in the order they were routed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_message_is_routed_without_waiting_for_its_actor_and_each_patient_keeps_its_order() {
        let store = Arc::new(MemoryStore::default());
        let t0 = time::macros::datetime!(2026-01-01 00:00 UTC);
        let clock = Arc::new(ManualClock(Mutex::new(t0)));
        // The rules of a reading of 99 /min wait until the test opens the gate.
        let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let held = Arc::clone(&gate);
        let rules = Arc::new(FnRules(move |v: &PatientView, _t: &[&str]| {
            if v.latest("rr", 600.0) == Some(99.0) {
                let (open, turn) = &*held;
                let mut open = open.lock().unwrap();
                while !*open {
                    open = turn.wait(open).unwrap();
                }
            }
            Vec::new()
        }));
        let router = Arc::new(Router::new(store.clone(), store.clone(), rules, clock).await.unwrap());
        let routed = tokio::time::timeout(std::time::Duration::from_secs(30), async {
            let slow = router.route_all(None, vec![event("100", 99.0, t0)]).await.unwrap();
            let after = router.route_all(None, vec![event("100", 12.0, t0)]).await.unwrap();
            router.ingest(event("200", 14.0, t0)).await.unwrap().wait().await.unwrap();
            (slow, after)
        })
        .await;
        let stored: Vec<_> = store.events().iter().map(|e| e.patient_id.0.clone()).collect();
        {
            let (open, turn) = &*gate;
            *open.lock().unwrap() = true;
            turn.notify_all();
        }
        let (slow, after) = routed.expect("routing waited for a busy actor");
        assert_eq!(stored, vec!["p-200"], "the other patient's message is durable while patient 100's actor works");
        slow.durable().await.unwrap();
        after.durable().await.unwrap();
        router.shutdown().await;
        let rr: Vec<_> = store
            .events()
            .iter()
            .filter(|e| e.patient_id.0 == "p-100")
            .map(|e| match &e.kind {
                EventKind::Observations { observations } => observations[0].value,
                _ => None,
            })
            .collect();
        assert_eq!(rr, vec![Some(99.0), Some(12.0)], "patient 100's messages applied in routed order");
    }

    /// A handler that panics fails its actor; the supervisor counts it, the messages it held
    /// are answered "not taken" (the sender resends), and the patient's next event restarts the
    /// actor rehydrated from the store: the rules see the history, and the open alert carries
    /// on as the same episode instead of being raised again.
    #[tokio::test]
    async fn a_failed_actor_is_counted_and_its_next_event_restarts_it_with_its_history_and_open_alert() {
        let publisher = Arc::new(CollectingPublisher::default());
        let store = Arc::new(MemoryStore::with_publisher(publisher.clone()));
        let t0 = time::macros::datetime!(2026-01-01 00:00 UTC);
        let clock = Arc::new(ManualClock(Mutex::new(t0)));
        let windows: Arc<Mutex<Vec<Vec<f64>>>> = Arc::default();
        let record = Arc::clone(&windows);
        // Raises for RR >= 30; a reading of 99 /min makes the rules panic (a defect, say).
        let rules = Arc::new(FnRules(move |v: &PatientView, _t: &[&str]| {
            let latest = v.latest("rr", 600.0);
            assert!(latest != Some(99.0), "rule defect");
            record.lock().unwrap().push(v.window("rr", 86_400.0).map(|s| s.value).collect());
            raises_at_30(latest)
        }));
        let failures = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let timings = crate::router::StartTimings {
            failures: metrics::Counter::from_arc(failures.clone()),
            ..Default::default()
        };
        let router = Arc::new(
            Router::new(store.clone(), store.clone(), rules, clock.clone()).await.unwrap().with_start_timings(timings),
        );
        let at = |minutes: i64| t0 + time::Duration::minutes(minutes);
        for (minute, rr) in [(0, 31.0), (1, 33.0)] {
            *clock.0.lock().unwrap() = at(minute);
            router.ingest(event("500", rr, at(minute))).await.unwrap().wait().await.unwrap();
        }
        *clock.0.lock().unwrap() = at(2);
        let failed = router.ingest(event("500", 99.0, at(2))).await;
        assert!(failed.is_err(), "the message the failed actor held is not taken: its sender resends");
        let counted = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while failures.load(std::sync::atomic::Ordering::Relaxed) == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert!(counted.is_ok(), "the supervisor counts the failure");

        *clock.0.lock().unwrap() = at(3);
        router.ingest(event("500", 34.0, at(3))).await.unwrap().wait().await.unwrap();
        assert_eq!(router.patient_count(), 1);
        assert_eq!(
            windows.lock().unwrap().last().unwrap(),
            &vec![31.0, 33.0, 34.0],
            "the restarted actor's rules see the stored history (the failed message was never stored)"
        );
        router.shutdown().await;
        let published = publisher.published.lock().unwrap().clone();
        assert!(published.iter().all(|c| c.alert.id == published[0].alert.id), "one episode, not a second alert");
        assert_eq!(published.iter().filter(|c| c.notify).count(), 1, "raised and notified once");
        assert_eq!(failures.load(std::sync::atomic::Ordering::Relaxed), 1);
    }
}
