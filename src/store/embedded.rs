//! The embedded store: fjall (an LSM engine) with a group-commit thread. Patient actors queue
//! appends; the committer drains whatever is queued into one write batch, makes it durable
//! with a single fsync, publishes the alert changes it contained in sequence order, and only
//! then completes the tickets that the senders' ACKs wait on.
//!
//! Every value is sealed with AES-256-GCM ([`KeyRing`]) before it reaches fjall, with the
//! keyspace and row key as associated data; keys are opaque (blind-index patient ids, sender +
//! control id, alert ids, sequence numbers), so no PHI reaches the disk in plaintext.
//! An alert upsert identical to the alert's stored state is a no-op (same sequence number, no
//! publication): replaying events after a crash never alerts twice.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::thread::JoinHandle;

use crate::crypto::{Aad, KeyRing};
use async_trait::async_trait;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use vigil_actors::{
    AcceptedMessage, Alert, AlertId, AlertPublisher, AlertStatus, AlertStore, ClinicalEvent, Durable, DurableSender,
    EventStore, FromMessage, MessageKey, MessageLog, PatientId, RecordedEvent, SequencedAlert, StoreError,
};

/// Tuning of the embedded store.
#[derive(Debug, Clone)]
pub struct EmbeddedStoreConfig {
    /// Writes queued ahead of the committer before appenders wait (back-pressure).
    pub queue_capacity: usize,
    /// Most writes made durable by one fsync.
    pub max_batch: usize,
}

impl Default for EmbeddedStoreConfig {
    fn default() -> Self {
        EmbeddedStoreConfig { queue_capacity: 16_384, max_batch: 4_096 }
    }
}

enum Job {
    /// The events of one message, each with its message-log entry, written in the same batch:
    /// all or none survive a crash, and a resend of a message we acknowledged is always
    /// recognised.
    Events {
        records: Vec<EventRecord>,
        alerts: Vec<(Box<Alert>, bool)>,
        done: DurableSender,
    },
    Alert {
        alert: Box<Alert>,
        notify: bool,
        done: DurableSender<u64>,
    },
}

/// One event ready for the batch: sealed record and, for the first event of its message, the
/// sealed message-log entry (a message is logged once, however many events it carries).
struct EventRecord {
    key: Vec<u8>,
    value: Vec<u8>,
    message: Option<(Vec<u8>, Vec<u8>)>,
}

struct Keyspaces {
    db: Database,
    keys: Arc<KeyRing>,
    events: Keyspace,
    /// Message log: (sender, control id) -> when accepted, for whom, and the raw message.
    messages: Keyspace,
    alerts: Keyspace,
    alert_log: Keyspace,
    /// Ids of alerts that are not resolved (values empty), kept in the same batches as the
    /// alerts: reading the open ones never scans every alert ever raised.
    open_index: Keyspace,
}

/// The fjall-backed store. Cloning shares it.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    ks: Arc<Keyspaces>,
    tx: mpsc::Sender<Job>,
    last_seq: Arc<AtomicU64>,
    event_counter: AtomicU32,
    committer: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    /// The last handle gone: close the queue so the committer makes what is queued durable,
    /// and wait for it, so a graceful shutdown never leaves an accepted write behind.
    fn drop(&mut self) {
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.tx, closed));
        if let Some(handle) = self.committer.lock().ok().and_then(|mut h| h.take()) {
            let _ = handle.join();
        }
    }
}

fn engine(op: &str) -> impl Fn(fjall::Error) -> StoreError + '_ {
    move |e| {
        tracing::error!(error = %e, op, "embedded store failure");
        StoreError::Engine(op.to_string())
    }
}

impl EmbeddedStore {
    /// Open (or create) the store under `dir` and start its committer. Values are sealed with
    /// `keys`; alert changes are handed to `publisher` once durable.
    pub fn open(
        dir: &Path,
        config: EmbeddedStoreConfig,
        keys: Arc<KeyRing>,
        publisher: Arc<dyn AlertPublisher>,
    ) -> Result<Self, StoreError> {
        let db = Database::builder(dir.join("fjall")).manual_journal_persist(true).open().map_err(engine("open"))?;
        let events = db.keyspace("events", KeyspaceCreateOptions::default).map_err(engine("open"))?;
        let messages = db.keyspace("messages", KeyspaceCreateOptions::default).map_err(engine("open"))?;
        let alerts = db.keyspace("alerts", KeyspaceCreateOptions::default).map_err(engine("open"))?;
        let alert_log = db.keyspace("alert_log", KeyspaceCreateOptions::default).map_err(engine("open"))?;
        let last_seq = match alert_log.last_key_value() {
            Some(guard) => {
                let key = guard.key().map_err(engine("recover"))?;
                u64::from_be_bytes(
                    key.as_ref()
                        .try_into()
                        .map_err(|_| StoreError::Corrupt("alert log key is not a sequence number".into()))?,
                )
            }
            None => 0,
        };
        let open_index = db.keyspace("open_alerts", KeyspaceCreateOptions::default).map_err(engine("open"))?;
        let ks = Arc::new(Keyspaces { db, keys, events, messages, alerts, alert_log, open_index });
        let last_seq = Arc::new(AtomicU64::new(last_seq));
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let committer = {
            let ks = Arc::clone(&ks);
            let last_seq = Arc::clone(&last_seq);
            std::thread::Builder::new()
                .name("vigil-committer".into())
                .spawn(move || run_committer(ks, rx, config.max_batch.max(1), last_seq, publisher))
                .map_err(|e| StoreError::Engine(format!("start committer: {e}")))?
        };
        Ok(EmbeddedStore {
            inner: Arc::new(Inner {
                ks,
                tx,
                last_seq,
                event_counter: AtomicU32::new(rand::random()),
                committer: std::sync::Mutex::new(Some(committer)),
            }),
        })
    }

    /// The underlying database, for adapters that keep their own keyspaces in it (audit,
    /// webhook cursors).
    pub fn database(&self) -> Database {
        self.inner.ks.db.clone()
    }

    async fn submit(&self, job: Job) -> Result<(), StoreError> {
        self.inner.tx.send(job).await.map_err(|_| StoreError::Unavailable("store is shutting down".into()))
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Keyspaces) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let ks = Arc::clone(&self.inner.ks);
        tokio::task::spawn_blocking(move || f(&ks)).await.map_err(|e| StoreError::Engine(format!("read task: {e}")))?
    }
}

const EVENTS: &str = "events";
const MESSAGES: &str = "messages";
const ALERTS: &str = "alerts";
const ALERT_LOG: &str = "alert_log";

fn seal(keys: &KeyRing, table: &str, key: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, StoreError> {
    keys.seal(Aad { table, key, column: "record" }, plaintext)
        .map_err(|e| StoreError::Engine(format!("seal {table}: {e}")))
}

fn open_json<T: serde::de::DeserializeOwned>(
    keys: &KeyRing,
    table: &str,
    key: &[u8],
    sealed: &[u8],
) -> Result<T, StoreError> {
    let plaintext = keys
        .open(Aad { table, key, column: "record" }, sealed)
        .map_err(|e| StoreError::Corrupt(format!("{table}: {e}")))?;
    serde_json::from_slice(&plaintext).map_err(|e| StoreError::Corrupt(format!("{table}: {e}")))
}

/// The message log's key: the (feed-scoped) sender and the sender's message id.
fn message_key(key: &MessageKey) -> Vec<u8> {
    let sender = key.scoped_sender();
    let mut out = Vec::with_capacity(sender.len() + 1 + key.id.len());
    out.extend_from_slice(sender.as_bytes());
    out.push(0);
    out.extend_from_slice(key.id.as_bytes());
    out
}

#[derive(serde::Serialize, serde::Deserialize)]
struct MessageRecord {
    #[serde(flatten)]
    accepted: AcceptedMessage,
    raw: String,
}

/// Events are keyed by patient, then time, then a counter: one patient's recent window is a
/// single range scan in time order.
fn event_key(patient: &PatientId, at: OffsetDateTime, counter: u32) -> Vec<u8> {
    let mut key = Vec::with_capacity(patient.0.len() + 1 + 16 + 4);
    key.extend_from_slice(patient.0.as_bytes());
    key.push(0);
    key.extend_from_slice(&at.unix_timestamp_nanos().to_be_bytes());
    key.extend_from_slice(&counter.to_be_bytes());
    key
}

impl EmbeddedStore {
    /// The sealed rows of one message's events: an event row each, and with the first the
    /// message-log entry of `message`, when given (a message is logged once).
    fn records_of(
        &self,
        message: Option<&FromMessage>,
        events: &[ClinicalEvent],
    ) -> Result<Vec<EventRecord>, StoreError> {
        let keys = &self.inner.ks.keys;
        let mut records = Vec::with_capacity(events.len());
        let mut log = message.filter(|m| m.logs_message);
        for event in events {
            let counter = self.inner.event_counter.fetch_add(1, Ordering::Relaxed);
            let key = event_key(&event.patient_id, event.received_at, counter);
            let value = super::event_body(event, message)?;
            let value = seal(keys, EVENTS, &key, &value)?;
            let message = match log.take() {
                Some(FromMessage { envelope, .. }) => {
                    let record = MessageRecord {
                        accepted: AcceptedMessage {
                            patient_id: event.patient_id.clone(),
                            received_at: envelope.received_at,
                        },
                        raw: envelope.raw.expose().clone(),
                    };
                    let message_value =
                        serde_json::to_vec(&record).map_err(|e| StoreError::Engine(format!("encode message: {e}")))?;
                    let message_key = message_key(&envelope.key);
                    let message_value = seal(keys, MESSAGES, &message_key, &message_value)?;
                    Some((message_key, message_value))
                }
                None => None,
            };
            records.push(EventRecord { key, value, message });
        }
        Ok(records)
    }

    /// Every stored event of `patient` received at or after `since`, oldest first, with the
    /// message it came from: for audit, replay and the crash tests.
    pub async fn recorded_events(
        &self,
        patient: &PatientId,
        since: OffsetDateTime,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let from = event_key(patient, since, 0);
        let mut to = patient.0.as_bytes().to_vec();
        to.push(1);
        self.blocking(move |ks| {
            let mut out = Vec::new();
            for guard in ks.events.range(from..to) {
                let (key, value) = guard.into_inner().map_err(engine("read events"))?;
                let body: super::StoredEventBody = open_json(&ks.keys, EVENTS, &key, &value)?;
                out.push(body.into());
            }
            Ok(out)
        })
        .await
    }
}

#[async_trait]
impl EventStore for EmbeddedStore {
    async fn append_all(
        &self,
        message: Option<&FromMessage>,
        events: &[ClinicalEvent],
        alerts: &[(Alert, bool)],
    ) -> Result<Durable, StoreError> {
        let records = self.records_of(message, events)?;
        let (done, ticket) = Durable::channel();
        let alerts = alerts.iter().map(|(a, n)| (Box::new(a.clone()), *n)).collect();
        self.submit(Job::Events { records, alerts, done }).await?;
        Ok(ticket)
    }

    async fn events_since(&self, patient: &PatientId, since: OffsetDateTime) -> Result<Vec<ClinicalEvent>, StoreError> {
        let from = event_key(patient, since, 0);
        let mut to = patient.0.as_bytes().to_vec();
        to.push(1);
        self.blocking(move |ks| {
            let mut out = Vec::new();
            for guard in ks.events.range(from..to) {
                let (key, value) = guard.into_inner().map_err(engine("read events"))?;
                out.push(open_json(&ks.keys, EVENTS, &key, &value)?);
            }
            Ok(out)
        })
        .await
    }
}

#[async_trait]
impl MessageLog for EmbeddedStore {
    async fn accepted_message(&self, key: &MessageKey) -> Result<Option<AcceptedMessage>, StoreError> {
        // A point read answered from memory or one bloom-filtered table: microseconds, so it
        // runs inline on the ingest path.
        let key = message_key(key);
        let Some(bytes) = self.inner.ks.messages.get(&key).map_err(engine("read message log"))? else {
            return Ok(None);
        };
        let record: MessageRecord = open_json(&self.inner.ks.keys, MESSAGES, &key, &bytes)?;
        Ok(Some(record.accepted))
    }
}

#[async_trait]
impl AlertStore for EmbeddedStore {
    async fn upsert_alert(&self, alert: &Alert, notify: bool) -> Result<Durable<u64>, StoreError> {
        let (done, ticket) = Durable::channel();
        self.submit(Job::Alert { alert: Box::new(alert.clone()), notify, done }).await?;
        Ok(ticket)
    }

    async fn alert(&self, id: &AlertId) -> Result<Option<SequencedAlert>, StoreError> {
        stored_alert(&self.inner.ks, &id.0)
    }

    async fn alerts_after(&self, after: u64, limit: usize) -> Result<Vec<SequencedAlert>, StoreError> {
        let Some(from) = after.checked_add(1) else { return Ok(Vec::new()) };
        self.blocking(move |ks| {
            let mut out = Vec::new();
            for guard in ks.alert_log.range(from.to_be_bytes()..).take(limit) {
                let (key, value) = guard.into_inner().map_err(engine("read alert log"))?;
                out.push(open_json(&ks.keys, ALERT_LOG, &key, &value)?);
            }
            Ok(out)
        })
        .await
    }

    async fn open_alerts(&self) -> Result<Vec<SequencedAlert>, StoreError> {
        self.blocking(|ks| {
            let mut out = Vec::new();
            for guard in ks.open_index.iter() {
                let id = guard.key().map_err(engine("read open alerts"))?;
                let id = std::str::from_utf8(&id).map_err(|_| StoreError::Corrupt("open alert id".into()))?;
                if let Some(change) = stored_alert(ks, id)? {
                    out.push(change);
                }
            }
            out.sort_by_key(|c| c.seq);
            Ok(out)
        })
        .await
    }

    async fn open_alerts_of(&self, patient: &PatientId) -> Result<Vec<vigil_actors::Alert>, StoreError> {
        // Alert ids begin with the patient's id (see `AlertStore::open_alerts_of`): one prefix
        // read of the open-alert index, not a scan of every open alert.
        let prefix = format!("{patient}-");
        let patient = patient.clone();
        self.blocking(move |ks| {
            let mut out = Vec::new();
            for guard in ks.open_index.prefix(prefix.as_bytes()) {
                let id = guard.key().map_err(engine("read open alerts"))?;
                let id = std::str::from_utf8(&id).map_err(|_| StoreError::Corrupt("open alert id".into()))?;
                if let Some(change) = stored_alert(ks, id)?
                    && change.alert.patient.id == patient
                {
                    out.push(change);
                }
            }
            out.sort_by_key(|c| c.seq);
            Ok(out.into_iter().map(|c| c.alert).collect())
        })
        .await
    }

    fn last_seq(&self) -> u64 {
        self.inner.last_seq.load(Ordering::Acquire)
    }
}

fn run_committer(
    ks: Arc<Keyspaces>,
    mut rx: mpsc::Receiver<Job>,
    max_batch: usize,
    last_seq: Arc<AtomicU64>,
    publisher: Arc<dyn AlertPublisher>,
) {
    let mut jobs = Vec::with_capacity(max_batch);
    while let Some(first) = rx.blocking_recv() {
        jobs.push(first);
        while jobs.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        commit(&ks, &mut jobs, &last_seq, publisher.as_ref());
    }
    if let Err(e) = ks.db.persist(PersistMode::SyncAll) {
        tracing::error!(error = %e, "final persist failed");
    }
}

/// An alert change ready for the batch, or the number of an identical stored state.
enum Staged {
    Unchanged(u64),
    New { change: Box<SequencedAlert>, state: Vec<u8>, log: Vec<u8> },
}

/// Number and seal one alert change as `next`, unless it equals the latest state (the batch's
/// own, else the stored one): idempotent, so a replay never alerts twice.
fn stage_alert(
    ks: &Keyspaces,
    latest: &std::collections::HashMap<String, SequencedAlert>,
    next: u64,
    alert: &Alert,
    notify: bool,
) -> Result<Staged, StoreError> {
    let current = match latest.get(&alert.id.0) {
        Some(change) => Some(change.clone()),
        None => stored_alert(ks, &alert.id.0).unwrap_or_else(|e| {
            tracing::error!(error = %e, "stored alert unreadable; writing the new state");
            None
        }),
    };
    if let Some(current) = current.filter(|c| &c.alert == alert) {
        return Ok(Staged::Unchanged(current.seq));
    }
    let change = SequencedAlert { seq: next, notify, alert: alert.clone() };
    let bytes = serde_json::to_vec(&change).map_err(|e| StoreError::Engine(format!("encode alert: {e}")))?;
    let state = seal(&ks.keys, ALERTS, change.alert.id.0.as_bytes(), &bytes)?;
    let log = seal(&ks.keys, ALERT_LOG, &next.to_be_bytes(), &bytes)?;
    Ok(Staged::New { change: Box::new(change), state, log })
}

fn commit(ks: &Keyspaces, jobs: &mut Vec<Job>, last_seq: &AtomicU64, publisher: &dyn AlertPublisher) {
    let mut batch = ks.db.batch().durability(Some(PersistMode::SyncAll));
    let mut seq = last_seq.load(Ordering::Acquire);
    let mut changes = Vec::new();
    // Per job: the sequence number it resolves to (alerts), or why it failed.
    let mut outcomes: Vec<Result<u64, StoreError>> = Vec::with_capacity(jobs.len());
    // Latest state per alert id in this batch, ahead of what the keyspace holds.
    let mut latest: std::collections::HashMap<String, SequencedAlert> = std::collections::HashMap::new();
    for job in jobs.iter() {
        // Stage a job's alert changes first: a job goes into the batch whole or not at all.
        let wanted: Vec<(&Alert, bool)> = match job {
            Job::Events { alerts, .. } => alerts.iter().map(|(a, n)| (a.as_ref(), *n)).collect(),
            Job::Alert { alert, notify, .. } => vec![(alert.as_ref(), *notify)],
        };
        let mut staged = Vec::with_capacity(wanted.len());
        // Staged straight into `latest`, remembering what each entry replaced, so a job that
        // fails part-way is undone without copying the map for every job.
        let mut undo: Vec<(String, Option<SequencedAlert>)> = Vec::new();
        let mut next = seq;
        let mut failed = None;
        for (alert, notify) in wanted {
            match stage_alert(ks, &latest, next + 1, alert, notify) {
                Ok(Staged::New { change, state, log }) => {
                    next += 1;
                    let id = change.alert.id.0.clone();
                    undo.push((id.clone(), latest.insert(id, (*change).clone())));
                    staged.push(Staged::New { change, state, log });
                }
                Ok(unchanged) => staged.push(unchanged),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failed {
            for (id, previous) in undo.into_iter().rev() {
                match previous {
                    Some(p) => latest.insert(id, p),
                    None => latest.remove(&id),
                };
            }
            outcomes.push(Err(e));
            continue;
        }
        if let Job::Events { records, .. } = job {
            for r in records {
                batch.insert(&ks.events, r.key.as_slice(), r.value.as_slice());
                if let Some((message_key, message_value)) = &r.message {
                    batch.insert(&ks.messages, message_key.as_slice(), message_value.as_slice());
                }
            }
        }
        let mut number = 0;
        for s in staged {
            match s {
                Staged::Unchanged(n) => number = n,
                Staged::New { change, state, log } => {
                    let id = change.alert.id.0.as_bytes();
                    if change.alert.status == AlertStatus::Resolved {
                        batch.remove(&ks.open_index, id);
                    } else {
                        batch.insert(&ks.open_index, id, []);
                    }
                    batch.insert(&ks.alerts, change.alert.id.0.as_bytes(), state);
                    batch.insert(&ks.alert_log, change.seq.to_be_bytes(), log);
                    number = change.seq;
                    changes.push(Arc::new(*change));
                }
            }
        }
        seq = next;
        outcomes.push(Ok(number));
    }
    let result = batch.commit().map_err(engine("commit"));
    if result.is_ok() {
        last_seq.store(seq, Ordering::Release);
        for change in &changes {
            publisher.publish(Arc::clone(change));
        }
    }
    for (job, outcome) in jobs.drain(..).zip(outcomes) {
        let outcome = result.clone().and(outcome);
        match job {
            Job::Events { done, .. } => done.complete(outcome.map(|_| ())),
            Job::Alert { done, .. } => done.complete(outcome),
        }
    }
}

fn stored_alert(ks: &Keyspaces, id: &str) -> Result<Option<SequencedAlert>, StoreError> {
    match ks.alerts.get(id.as_bytes()).map_err(engine("read alert"))? {
        Some(bytes) => open_json(&ks.keys, ALERTS, id.as_bytes(), &bytes).map(Some),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_actors::Envelope;
    use vigil_actors::fakes::CollectingPublisher;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_appends_share_commits_and_survive_reopen() {
        let dir = tempdir();
        let publisher = Arc::new(CollectingPublisher::default());
        let store = EmbeddedStore::open(&dir, EmbeddedStoreConfig::default(), test_keys(), publisher).unwrap();
        let patient = PatientId("p1".into());
        let t0 = OffsetDateTime::now_utc();
        let mut tickets = Vec::new();
        for i in 0..200 {
            let event = test_event(&patient, t0 + time::Duration::milliseconds(i));
            tickets.push(store.append_all(Some(&test_message(&event)), &[event], &[]).await.unwrap());
        }
        for t in tickets {
            t.wait().await.unwrap();
        }
        let read = store.events_since(&patient, t0).await.unwrap();
        assert_eq!(read.len(), 200);
        assert!(read.windows(2).all(|w| w[0].received_at <= w[1].received_at));
        drop(store);
        let reopened = EmbeddedStore::open(
            &dir,
            EmbeddedStoreConfig::default(),
            test_keys(),
            Arc::new(CollectingPublisher::default()),
        )
        .unwrap();
        assert_eq!(reopened.events_since(&patient, t0).await.unwrap().len(), 200);
        assert!(reopened.events_since(&PatientId("p2".into()), t0).await.unwrap().is_empty());
        let first = test_message(&read[0]).envelope.key.clone();
        let seen = reopened.accepted_message(&first).await.unwrap().unwrap();
        assert_eq!(seen.patient_id, patient);
        assert!(reopened.accepted_message(&MessageKey::hl7("S", "never-sent")).await.unwrap().is_none());
        assert!(reopened.accepted_message(&MessageKey::hl7("OTHER", &first.id)).await.unwrap().is_none());
        let fhir = MessageKey { source: vigil_actors::Source::Fhir, ..first };
        assert!(reopened.accepted_message(&fhir).await.unwrap().is_none(), "feeds do not share message ids");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_message_with_ten_orders_is_logged_once_beside_its_ten_events() {
        let dir = tempdir();
        let store = EmbeddedStore::open(
            &dir,
            EmbeddedStoreConfig::default(),
            test_keys(),
            Arc::new(CollectingPublisher::default()),
        )
        .unwrap();
        let patient = PatientId("p-rde".into());
        let t0 = OffsetDateTime::now_utc();
        // One RDE^O11 with ten orders: one message, ten events.
        let raw = format!(
            "MSH|^~\\&|PHARM|HOSP|VIGIL|VIGIL|20260101||RDE^O11|RDE-10|P|2.5\r{}",
            "ORC|NW\rRXE|...\r".repeat(10)
        );
        let events: Vec<ClinicalEvent> = (0..10)
            .map(|i| ClinicalEvent {
                kind: vigil_actors::EventKind::MedicationOrder {
                    action: vigil_actors::OrderAction::New,
                    medication: vigil_actors::Medication {
                        order_id: format!("ORD-{i}"),
                        rxnorm: None,
                        name: format!("drug {i}"),
                    },
                },
                ..test_event(&patient, t0)
            })
            .collect();
        let envelope =
            Envelope { key: MessageKey::hl7("S", "RDE-10"), raw: vigil_actors::Phi(raw.clone()), received_at: t0 };
        let message = FromMessage { envelope: Arc::new(envelope), logs_message: true };
        let records = store.records_of(Some(&message), &events).unwrap();
        assert_eq!(records.len(), 10);
        assert_eq!(
            records.iter().filter(|r| r.message.is_some()).count(),
            1,
            "the raw message is sealed and written once"
        );
        store.append_all(Some(&message), &events, &[]).await.unwrap().wait().await.unwrap();
        // A second message: logged too.
        let second = test_event(&patient, t0 + time::Duration::seconds(1));
        store.append_all(Some(&test_message(&second)), &[second], &[]).await.unwrap().wait().await.unwrap();
        assert_eq!(store.events_since(&patient, t0).await.unwrap().len(), 11, "every event is stored");
        let recorded = store.recorded_events(&patient, t0).await.unwrap();
        let of_rde = recorded.iter().filter(|r| r.message.as_ref().is_some_and(|m| m.id == "RDE-10")).count();
        assert_eq!(of_rde, 10, "each event row names its message, the raw text is not repeated in it");
        let logged: Vec<(Vec<u8>, Vec<u8>)> = store
            .inner
            .ks
            .messages
            .iter()
            .map(|guard| {
                let (key, value) = guard.into_inner().unwrap();
                (key.to_vec(), value.to_vec())
            })
            .collect();
        assert_eq!(logged.len(), 2, "one message-log entry per message, not per event");
        let rde = logged.iter().find(|(key, _)| key.ends_with(b"RDE-10")).expect("the RDE is logged");
        let record: MessageRecord = open_json(&store.inner.ks.keys, MESSAGES, &rde.0, &rde.1).unwrap();
        assert_eq!(record.raw, raw, "the raw message, once");
        assert!(store.accepted_message(&MessageKey::hl7("S", "RDE-10")).await.unwrap().is_some());
    }

    pub(crate) fn test_keys() -> Arc<KeyRing> {
        Arc::new(KeyRing::from_keys(&[(1, [9; 32])]).unwrap())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance() {
        let publisher = Arc::new(crate::store::conformance::RecordingPublisher::default());
        let store =
            EmbeddedStore::open(&tempdir(), EmbeddedStoreConfig::default(), test_keys(), publisher.clone()).unwrap();
        let store = Arc::new(store);
        crate::store::conformance::run(store.clone(), publisher, crate::store::conformance::Capabilities::FULL).await;
    }

    pub(crate) fn tempdir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("vigil-test-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn test_event(patient: &PatientId, at: OffsetDateTime) -> ClinicalEvent {
        ClinicalEvent {
            patient_id: patient.clone(),
            patient: vigil_actors::PatientKey { authority: "A".into(), mrn: vigil_actors::Phi("1".into()) },
            demographics: Default::default(),
            location: None,
            received_at: at,
            kind: vigil_actors::EventKind::Observations { observations: vec![] },
        }
    }

    /// The message `event` came in: one per event, named by its time.
    fn test_message(event: &ClinicalEvent) -> FromMessage {
        let id = format!("c-{}", event.received_at.unix_timestamp_nanos());
        let envelope = Envelope {
            key: MessageKey::hl7("S", id),
            raw: vigil_actors::Phi("MSH|...".into()),
            received_at: event.received_at,
        };
        FromMessage { envelope: Arc::new(envelope), logs_message: true }
    }
}
