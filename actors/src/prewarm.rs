//! Prewarm: at start-up, before the server reports ready and before MLLP takes a message, start
//! the patient actors that stopped cleanly (their state snapshots are kept), a few at a time
//! and within a deadline, so that the first messages after a restart find their actors warm
//! instead of each waiting behind a rebuild. After a crash the actors live at the crash left
//! no snapshot: they start on their first event, as without prewarm. A patient the deadline
//! leaves unstarted keeps its snapshot and starts on its first event too.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::model::PatientId;
use crate::router::Router;

/// How much prewarming a start-up may do.
#[derive(Debug, Clone)]
pub struct PrewarmConfig {
    /// Actors started at once (each start reads the store and decodes a snapshot).
    pub concurrency: usize,
    /// Time after which no further actor is started and start-up carries on.
    pub deadline: Duration,
    /// Most actors started (the newest snapshots are not known apart from the oldest: a bound,
    /// not a choice).
    pub max_patients: usize,
}

impl Default for PrewarmConfig {
    fn default() -> Self {
        PrewarmConfig { concurrency: 4, deadline: Duration::from_secs(20), max_patients: 50_000 }
    }
}

/// What a prewarm did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PrewarmReport {
    /// Patients with a snapshot, as listed (at most `max_patients`).
    pub listed: usize,
    /// Actors started (or found live) before the deadline.
    pub started: usize,
    /// Starts that failed (the patient starts on its first event instead).
    pub failed: usize,
    /// The deadline came first: starts still running finish in the background, and no new
    /// one begins.
    pub deadline_reached: bool,
}

#[derive(Default)]
struct Progress {
    next: AtomicUsize,
    started: AtomicUsize,
    failed: AtomicUsize,
}

/// Start the actors of the patients whose snapshots the store keeps, `config.concurrency` at a
/// time, until all are started or `config.deadline` has passed. Returns by the deadline
/// whatever the store does: a start under way then is left to finish (never cancelled half
/// way, which could leave an actor outside the router's map), and no further one begins.
pub async fn prewarm(router: &Arc<Router>, config: &PrewarmConfig) -> PrewarmReport {
    let deadline = Instant::now() + config.deadline;
    let listing = tokio::time::timeout_at(deadline, router.snapshotted_patients(config.max_patients)).await;
    let ids: Arc<Vec<PatientId>> = match listing {
        Ok(Ok(ids)) => Arc::new(ids),
        Ok(Err(error)) => {
            tracing::warn!(%error, "snapshots not listed; patient actors start on their first event");
            return PrewarmReport::default();
        }
        Err(_) => return PrewarmReport { deadline_reached: true, ..PrewarmReport::default() },
    };
    let progress = Arc::new(Progress::default());
    let workers: Vec<_> = (0..config.concurrency.clamp(1, ids.len().max(1)))
        .map(|_| tokio::spawn(start_each(Arc::clone(router), Arc::clone(&ids), Arc::clone(&progress), deadline)))
        .collect();
    // A worker that outlives the deadline is detached (its handle dropped), not aborted.
    let all_done = async {
        for worker in workers {
            let _ = worker.await;
        }
    };
    let deadline_reached = tokio::time::timeout_at(deadline, all_done).await.is_err();
    PrewarmReport {
        listed: ids.len(),
        started: progress.started.load(Ordering::Acquire),
        failed: progress.failed.load(Ordering::Acquire),
        deadline_reached,
    }
}

/// One worker: take the next patient and start its actor, until none is left or the deadline
/// has passed.
async fn start_each(router: Arc<Router>, ids: Arc<Vec<PatientId>>, progress: Arc<Progress>, deadline: Instant) {
    while Instant::now() < deadline {
        let Some(id) = ids.get(progress.next.fetch_add(1, Ordering::AcqRel)) else { return };
        match router.warm(id).await {
            Ok(()) => progress.started.fetch_add(1, Ordering::AcqRel),
            Err(error) => {
                tracing::debug!(patient = %id, %error, "patient actor not prewarmed; it starts on its first event");
                progress.failed.fetch_add(1, Ordering::AcqRel)
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use time::OffsetDateTime;

    use super::*;
    use crate::fakes::{CollectingPublisher, FnRules, ManualClock, MemoryStore};
    use crate::model::*;
    use crate::ports::{Durable, EventStore, PatientView, StoreError};

    fn event(mrn: &str, rr: f64, at: OffsetDateTime) -> ClinicalEvent {
        crate::fakes::rr_event(mrn, rr, at)
    }

    type Seen = Arc<Mutex<Vec<(PatientId, Vec<f64>)>>>;

    /// Rules that record the RR window each run sees, per patient, and raise nothing.
    fn recording_rules(seen: &Seen) -> Arc<dyn crate::ports::RuleEngine> {
        let record = Arc::clone(seen);
        Arc::new(FnRules(move |v: &PatientView, _t: &[&str]| {
            let window = v.window("rr", 86_400.0).map(|s| s.value).collect();
            record.lock().unwrap().push((v.patient_id.clone().unwrap(), window));
            Vec::new()
        }))
    }

    #[tokio::test]
    async fn prewarm_starts_the_snapshotted_actors_and_a_message_after_the_restart_sees_its_history() {
        let store = Arc::new(MemoryStore::with_publisher(Arc::new(CollectingPublisher::default())));
        let t0 = time::macros::datetime!(2026-01-01 00:00 UTC);
        let clock = Arc::new(ManualClock(Mutex::new(t0)));
        let at = |minutes: i64| t0 + time::Duration::minutes(minutes);
        let seen: Seen = Arc::default();
        let before = std::sync::Arc::new(
            Router::new(store.clone(), store.clone(), recording_rules(&seen), clock.clone()).await.unwrap(),
        );
        for (minute, rr) in [(0, 18.0), (10, 19.0)] {
            for mrn in ["600", "601"] {
                before.ingest(event(mrn, rr, at(minute))).await.unwrap().wait().await.unwrap();
            }
        }
        before.shutdown().await;
        // A patient whose actor was live at a crash: events logged, no snapshot written.
        store.append(&event("602", 25.0, at(5))).await.unwrap().wait().await.unwrap();
        let (warm_a, warm_b, cold) = (PatientId("p-600".into()), PatientId("p-601".into()), PatientId("p-602".into()));
        assert!(store.snapshot_of(&warm_a).is_some() && store.snapshot_of(&warm_b).is_some());

        *clock.0.lock().unwrap() = at(20);
        let router =
            Arc::new(Router::new(store.clone(), store.clone(), recording_rules(&seen), clock.clone()).await.unwrap());
        let report = prewarm(&router, &PrewarmConfig::default()).await;
        assert_eq!(report, PrewarmReport { listed: 2, started: 2, failed: 0, deadline_reached: false });
        assert_eq!(router.patient_count(), 2, "the two that stopped cleanly are live; the crashed one is not");
        assert!(store.snapshot_of(&warm_a).is_none() && store.snapshot_of(&warm_b).is_none(), "taken by the starts");

        // The first message finds the actor warm: nothing is read from the store for it, and its
        // rules see the whole window.
        let read_before = store.events_read();
        router.ingest(event("600", 21.0, at(20))).await.unwrap().wait().await.unwrap();
        assert_eq!(store.events_read(), read_before, "no rebuild on the first message");
        assert_eq!(seen.lock().unwrap().last().unwrap(), &(warm_a, vec![18.0, 19.0, 21.0]));
        // The patient with no snapshot starts on its first event, from the log.
        router.ingest(event("602", 26.0, at(20))).await.unwrap().wait().await.unwrap();
        assert_eq!(seen.lock().unwrap().last().unwrap(), &(cold.clone(), vec![25.0, 26.0]));
        assert_eq!(router.patient_count(), 3);

        // A merge retires 601 into 602: the retired record's actor stops, and its snapshot is
        // dropped, so the next restart does not bring it back (into its old bed).
        let merge = ClinicalEvent {
            kind: EventKind::Merge {
                prior: PatientKey { authority: "HOSP".into(), mrn: Phi("601".into()) },
                prior_id: warm_b.clone(),
            },
            ..event("602", 26.0, at(21))
        };
        router.ingest(merge).await.unwrap().wait().await.unwrap();
        assert!(store.snapshot_of(&warm_b).is_none(), "the retired record keeps no snapshot");
        router.shutdown().await;
        let router = Arc::new(Router::new(store.clone(), store.clone(), recording_rules(&seen), clock).await.unwrap());
        let report = prewarm(&router, &PrewarmConfig::default()).await;
        assert_eq!(report, PrewarmReport { listed: 2, started: 2, failed: 0, deadline_reached: false });
        assert!(router.census().get(&warm_b).is_none(), "the retired record is in no bed");
        router.shutdown().await;
    }

    /// A store whose snapshot read (or listing) of some patients never returns.
    struct StallingStore {
        inner: Arc<MemoryStore>,
        stalled: Option<PatientId>,
        listing_stalls: bool,
    }

    #[async_trait]
    impl EventStore for StallingStore {
        async fn append_all(
            &self,
            message: Option<&FromMessage>,
            events: &[ClinicalEvent],
            alerts: &[(Alert, bool)],
        ) -> Result<Durable, StoreError> {
            self.inner.append_all(message, events, alerts).await
        }

        async fn events_since(
            &self,
            patient: &PatientId,
            since: OffsetDateTime,
        ) -> Result<Vec<ClinicalEvent>, StoreError> {
            self.inner.events_since(patient, since).await
        }

        async fn save_snapshot(&self, patient: &PatientId, snapshot: &[u8]) -> Result<(), StoreError> {
            self.inner.save_snapshot(patient, snapshot).await
        }

        async fn take_snapshot(&self, patient: &PatientId) -> Result<Option<Vec<u8>>, StoreError> {
            if self.stalled.as_ref() == Some(patient) {
                std::future::pending::<()>().await;
            }
            self.inner.take_snapshot(patient).await
        }

        async fn snapshotted_patients(&self, limit: usize) -> Result<Vec<PatientId>, StoreError> {
            if self.listing_stalls {
                std::future::pending::<()>().await;
            }
            self.inner.snapshotted_patients(limit).await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn prewarm_stops_at_its_deadline_and_one_stalled_start_holds_up_no_other() {
        let store = Arc::new(MemoryStore::with_publisher(Arc::new(CollectingPublisher::default())));
        let t0 = time::macros::datetime!(2026-01-01 00:00 UTC);
        let clock = Arc::new(ManualClock(Mutex::new(t0)));
        let seen: Seen = Arc::default();
        let before = std::sync::Arc::new(
            Router::new(store.clone(), store.clone(), recording_rules(&seen), clock.clone()).await.unwrap(),
        );
        for mrn in ["700", "701", "702"] {
            before.ingest(event(mrn, 18.0, t0)).await.unwrap().wait().await.unwrap();
        }
        before.shutdown().await;
        let config = PrewarmConfig { concurrency: 2, deadline: Duration::from_secs(20), max_patients: 100 };

        // One patient's snapshot read never returns: prewarm returns at its deadline, and the
        // other worker started the other two meanwhile.
        let stalling = Arc::new(StallingStore {
            inner: store.clone(),
            stalled: Some(PatientId("p-701".into())),
            listing_stalls: false,
        });
        let router =
            Arc::new(Router::new(stalling, store.clone(), recording_rules(&seen), clock.clone()).await.unwrap());
        let began = Instant::now();
        let report = prewarm(&router, &config).await;
        assert_eq!(report, PrewarmReport { listed: 3, started: 2, failed: 0, deadline_reached: true });
        assert_eq!(began.elapsed(), config.deadline, "returned at the deadline, not later");
        assert_eq!(router.patient_count(), 2);
        // A message for a started patient is answered while the stalled start still hangs.
        let later = t0 + time::Duration::minutes(1);
        router.ingest(event("700", 20.0, later)).await.unwrap().wait().await.unwrap();
        assert_eq!(seen.lock().unwrap().last().unwrap(), &(PatientId("p-700".into()), vec![18.0, 20.0]));

        // A listing that never returns: prewarm gives up at the deadline and starts nothing.
        let stalling = Arc::new(StallingStore { inner: store.clone(), stalled: None, listing_stalls: true });
        let router = Arc::new(Router::new(stalling, store.clone(), recording_rules(&seen), clock).await.unwrap());
        let began = Instant::now();
        let report = prewarm(&router, &config).await;
        assert_eq!(report, PrewarmReport { listed: 0, started: 0, failed: 0, deadline_reached: true });
        assert_eq!(began.elapsed(), config.deadline);
        assert_eq!(router.patient_count(), 0);
    }
}
